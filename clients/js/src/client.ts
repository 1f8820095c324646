/**
 * The progressq browser client: one identity's live task list over a WebSocket (or, where
 * none gets through, the event stream), with reconnect, resume and a per-task API.
 */
import { backoffDelay } from './backoff.js';
import { Endpoints, parseServerMessage } from './endpoints.js';
import { readAnswer, timeRequest } from './http.js';
import { canTransition, connectionState, type ConnectionState, type Phase } from './state.js';
import { TaskStore } from './task-store.js';
import type { TaskHandle } from './tasks.js';
import type {
	ClientEvents,
	ClientOptions,
	EventSourceLike,
	Listener,
	SocketLike,
	StoredIdentity,
	Transport
} from './types.js';
import {
	SERVER_MESSAGE_TYPES,
	type ClientMessage,
	type ConnectionMessage,
	type ResumeRequest,
	type StartedTask,
	type TaskList,
	type TaskView
} from './wire.js';

const OPEN = 1;
const SOURCE_CLOSED = 2;
const MAX_STORED_TASKS = 200;

/** The connection in use: a WebSocket, or an event stream with what its URL claimed. */
type Link =
	| { kind: 'websocket'; socket: SocketLike }
	| {
			kind: 'eventsource';
			source: EventSourceLike;
			/** The identity the stream's URL names (null: it asked for a new one). */
			claimed: string | null;
			/** The stream has announced its identity (a `connection` message). */
			announced: boolean;
	  };

interface PendingPing {
	sentAt: number;
	resolve: (rtt: number) => void;
	reject: (error: Error) => void;
	timer: ReturnType<typeof setTimeout>;
}

/** Options of `start()`. */
export interface StartOptions {
	/** The task's display name (default: the server's, usually the kind). */
	name?: string;
	/**
	 * A unique key: while this identity has an unfinished task started with it, the server
	 * answers with that task instead of starting another.
	 */
	key?: string;
}

export class ProgressQClient {
	private readonly options: ClientOptions;
	private readonly endpoints: Endpoints;
	private readonly listeners: { [K in keyof ClientEvents]: Set<Listener<ClientEvents[K]>> } = {
		status: new Set(),
		identity: new Set(),
		tasks: new Set(),
		message: new Set(),
		warning: new Set()
	};

	/** The one state of the connection; changed only by `transition()`. */
	private phase: Phase = 'idle';
	private link: Link | null = null;
	private _transport: Transport;
	/** WebSockets of this client that opened; once one did, it never falls back. */
	private socketsOpened = 0;
	/** WebSocket attempts in a row that failed before opening. */
	private socketFailures = 0;
	/** Bumped by `connect()`/`close()`, so work that awaited something can tell it is stale. */
	private generation = 0;
	/** Waiting for the stream cookie before opening the event stream. */
	private sourcePending = false;
	private retryTimer: ReturnType<typeof setTimeout> | null = null;
	private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
	private pings: PendingPing[] = [];
	private identityWaiters: Array<() => void> = [];
	/** The last status reported, so that a transition changing nothing visible reports nothing. */
	private lastStatusKey = '';

	private _attempt = 0;
	/** Connections confirmed since `connect()`. */
	private connections = 0;
	private _nextAttemptAt: number | null = null;
	private _closeCode: number | null = null;
	private _closeReason = '';
	private _socketId: string | null = null;
	private _identity: StoredIdentity | null = null;
	/** The identity the server refused: the next connection takes a new one instead. */
	private refused: string | null = null;
	/** The identity's tasks; complete as of `lastSeq` or not (then a resume asks for a snapshot). */
	private readonly store = new TaskStore();

	constructor(options: ClientOptions = {}) {
		this.options = options;
		this.endpoints = new Endpoints(options);
		this._identity = this.loadIdentity();
		if (options.clientId !== undefined && this._identity?.clientId !== options.clientId) {
			this.store.clear('another identity was given');
			this._identity = { clientId: options.clientId, lastSeq: 0 };
		}
		this._transport =
			options.socketFactory === undefined && typeof WebSocket === 'undefined' && this.hasEventSource()
				? 'eventsource'
				: 'websocket';
	}

	// --- state ---

	get state(): ConnectionState {
		return connectionState(this.phase, this.firstTry);
	}

	/** `'websocket'`, or `'eventsource'` once the client fell back to the event stream. */
	get transport(): Transport {
		return this._transport;
	}

	/** This connection's id (changes on every connection). */
	get socketId(): string | null {
		return this._socketId;
	}

	/** The identity's id (kept across reconnects and, with storage, page loads). */
	get clientId(): string | null {
		return this._identity?.clientId ?? null;
	}

	/** The identity's sequence number of the last event applied. */
	get lastSeq(): number {
		return this._identity?.lastSeq ?? 0;
	}

	/** True once the task list is known to be complete (a snapshot, or restored from storage). */
	get synced(): boolean {
		return this.store.complete;
	}

	/** The identity's tasks, newest first. */
	get tasks(): TaskView[] {
		return this.store.list;
	}

	on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
		this.listeners[event].add(listener);
		return () => this.listeners[event].delete(listener);
	}

	// --- connection ---

	/** Opens the connection (and keeps it open until `close()`). */
	connect(): void {
		if (this.link !== null || this.retryTimer !== null || this.sourcePending) return;
		this.generation += 1;
		this._attempt = 0;
		this.connections = 0;
		this.open();
	}

	/** Closes the connection for good; no reconnect follows. */
	close(): void {
		this.generation += 1;
		this.sourcePending = false;
		this.clearRetry();
		this.stopHeartbeat();
		this.dropLink(1000, 'client closed');
		this.failPings(new Error('connection closed'));
		this.transition('closed');
	}

	/** Skips the wait of a scheduled reconnect (e.g. when the browser comes back online). */
	reconnectNow(): void {
		if (this.retryTimer === null) return;
		this.clearRetry();
		this.open();
	}

	/** Forgets the stored identity; the next connection takes a new one. */
	forgetIdentity(): void {
		this._identity = null;
		this.store.clear('the identity was forgotten');
		this.options.storage?.removeItem(this.storageKey);
		this.emit('tasks', this.tasks);
	}

	/**
	 * Pings the server; resolves with the round-trip time in ms. Over the event stream, which
	 * a client cannot write to, it times a `GET /health` instead.
	 */
	ping(): Promise<number> {
		if (this._transport === 'eventsource') {
			if (this.link === null || this.phase !== 'connected') return Promise.reject(new Error('not connected'));
			return this.pingOverHttp();
		}
		const socket = this.link?.kind === 'websocket' ? this.link.socket : null;
		if (socket === null || socket.readyState !== OPEN) {
			return Promise.reject(new Error('not connected'));
		}
		const now = this.now();
		return new Promise<number>((resolve, reject) => {
			const timer = setTimeout(() => {
				this.pings = this.pings.filter((p) => p !== pending);
				reject(new Error('ping timed out'));
			}, this.options.pingTimeoutMs ?? 10000);
			const pending: PendingPing = { sentAt: now, resolve, reject, timer };
			this.pings.push(pending);
			this.send({ type: 'ping' });
		});
	}

	// --- tasks ---

	/**
	 * One task of this identity: its latest view, its changes, and a promise of its terminal
	 * view. The task need not be known yet (e.g. its id came from elsewhere); the handle
	 * fills in when the task's events arrive.
	 */
	task(id: string): TaskHandle {
		return this.store.handle(id);
	}

	/**
	 * Starts a task of a registered kind: `POST {prefix}/api/tasks/{kind}` with `params` as
	 * the body. Resolves with the task's handle once the server accepted it; a refusal (e.g.
	 * 422 naming the bad field) rejects with `ProgressQHttpError`.
	 */
	async start(kind: string, params: unknown = {}, options: StartOptions = {}): Promise<TaskHandle> {
		const query = (['name', 'key'] as const)
			.filter((field) => options[field] !== undefined)
			.map((field) => `${field}=${encodeURIComponent(options[field] as string)}`);
		const path = `/api/tasks/${encodeURIComponent(kind)}${query.length ? `?${query.join('&')}` : ''}`;
		const started = await this.call<StartedTask>('POST', this.endpoints.route(path), params);
		return this.track(started);
	}

	/**
	 * Follows a task that the app started by its own route (which answered with the task
	 * view): shows it at once if its events have not arrived yet, and gives its handle.
	 */
	track(started: TaskView): TaskHandle {
		const { clientId: _owner, ...view } = started as StartedTask;
		this.upsert(view as TaskView);
		return this.task(started.id);
	}

	/** Cancels a task of this identity. */
	async cancel(taskId: string): Promise<TaskView | null> {
		const url = this.endpoints.route(`/api/task/${encodeURIComponent(taskId)}/cancel`);
		const answer = await this.call<TaskView | null>('POST', url);
		if (answer !== null && typeof answer === 'object' && 'id' in answer && 'status' in answer) {
			this.upsert(answer);
		}
		return answer;
	}

	/** Fetches the identity's tasks over HTTP and merges them into the list. */
	async list(): Promise<TaskView[]> {
		const answer = await this.call<TaskList | TaskView[]>('GET', this.endpoints.route('/api/tasks'));
		const tasks = Array.isArray(answer) ? answer : answer.tasks;
		let changed = false;
		for (const task of tasks) changed = this.store.merge(task) || changed;
		if (changed) this.emit('tasks', this.tasks);
		return tasks;
	}

	/**
	 * Calls an HTTP route as this identity: waits for the identity, sends it as `X-Client-Id`
	 * with the `headers` hook's headers, JSON in and out; an error answer rejects with
	 * `ProgressQHttpError`. `path` is relative to `baseUrl` (not `prefix`), so it reaches the
	 * app's own routes too, e.g. a start route of its own whose answer goes to `track()`.
	 */
	request<T>(method: string, path: string, body?: unknown): Promise<T> {
		return this.call<T>(method, this.endpoints.app(path), body);
	}

	private async call<T>(method: string, url: string, body?: unknown): Promise<T> {
		const clientId = await this.identity();
		const headers = await this.headers({ Accept: 'application/json', 'X-Client-Id': clientId });
		const init: RequestInit = { method, headers };
		if (body !== undefined) {
			headers['Content-Type'] = 'application/json';
			init.body = JSON.stringify(body);
		}
		return readAnswer<T>(await this.fetch(url, init));
	}

	// --- internals: the state machine ---

	/** The only place the phase changes; every change is checked and reported. */
	private transition(to: Phase): void {
		if (!canTransition(this.phase, to)) {
			throw new Error(`progressq: no transition from ${this.phase} to ${to}`);
		}
		this.phase = to;
		if (to === 'connected') {
			this._attempt = 0;
			this.connections += 1;
		}
		if (to === 'opening' || to === 'waiting' || to === 'closed') this._socketId = null;
		const status = {
			state: this.state,
			transport: this._transport,
			attempt: this._attempt,
			nextAttemptAt: this._nextAttemptAt,
			closeCode: this._closeCode,
			closeReason: this._closeReason
		};
		const key = JSON.stringify(status);
		if (key === this.lastStatusKey) return;
		this.lastStatusKey = key;
		this.emit('status', status);
	}

	/** No connection confirmed and no attempt failed since `connect()`. */
	private get firstTry(): boolean {
		return this.connections === 0 && this._attempt === 0;
	}

	// --- internals: opening and losing connections ---

	private get storageKey(): string {
		return this.options.storageKey ?? 'progressq.identity';
	}

	private now(): number {
		if (this.options.now) return this.options.now();
		return typeof performance !== 'undefined' ? performance.now() : Date.now();
	}

	private fetch(url: string, init: RequestInit): Promise<Response> {
		const doFetch = this.options.fetch ?? fetch;
		return doFetch(url, init);
	}

	private async headers(base: Record<string, string>): Promise<Record<string, string>> {
		const extra = this.options.headers ? await this.options.headers() : {};
		return { ...base, ...extra };
	}

	/** The identity to claim on the next connection: none after a refusal. */
	private get claim(): StoredIdentity | null {
		return this.refused === null ? this._identity : null;
	}

	private makeSocket(url: string): SocketLike {
		if (this.options.socketFactory) return this.options.socketFactory(url);
		return new WebSocket(url) as unknown as SocketLike;
	}

	private open(): void {
		this._nextAttemptAt = null;
		if (this._transport === 'eventsource') {
			this.openSource();
			return;
		}
		this.transition('opening');
		let socket: SocketLike;
		try {
			socket = this.makeSocket(this.endpoints.socket());
		} catch {
			this.socketFailed();
			return;
		}
		this.link = { kind: 'websocket', socket };
		socket.onopen = () => this.handleOpen(socket);
		socket.onmessage = (ev) => this.handleMessage(socket, ev.data);
		socket.onclose = (ev) => this.handleClose(socket, ev.code, ev.reason);
		socket.onerror = () => {
			// a close event always follows; nothing to do here
		};
	}

	private isCurrent(socket: SocketLike): boolean {
		return this.link?.kind === 'websocket' && this.link.socket === socket;
	}

	/** Lets go of the current connection (closing it) without scheduling anything. */
	private dropLink(code: number, reason: string): void {
		const link = this.link;
		this.link = null;
		if (link === null) return;
		try {
			if (link.kind === 'websocket') {
				detach(link.socket);
				link.socket.close(code, reason);
			} else {
				link.source.close();
			}
		} catch {
			// already closed
		}
	}

	private handleOpen(socket: SocketLike): void {
		if (!this.isCurrent(socket)) return;
		this.socketsOpened += 1;
		this.socketFailures = 0;
		const identity = this.claim;
		if (identity !== null) {
			// Without a complete list, ask for a snapshot rather than for what came after lastSeq.
			const resume: ResumeRequest = { type: 'resume', clientId: identity.clientId };
			if (this.store.complete) resume.lastSeq = identity.lastSeq;
			this.transition('resuming');
			this.send(resume);
		} else {
			this.transition('greeting');
		}
		this.startHeartbeat();
	}

	private handleClose(socket: SocketLike, code: number, reason: string): void {
		if (!this.isCurrent(socket)) return;
		detach(socket);
		this.link = null;
		this.stopHeartbeat();
		this.failPings(new Error('connection lost'));
		this._closeCode = code;
		this._closeReason = reason;
		if (this.phase === 'resuming' && code === 1008) {
			// The server refused the identity (not issued by it, expired, forged):
			// take a new one on the next connection instead of retrying forever.
			this.refuse(this._identity?.clientId ?? '');
		}
		if (this.phase === 'opening') {
			this.socketFailed();
		} else {
			this.scheduleReconnect();
		}
	}

	private refuse(clientId: string): void {
		this.refused = clientId;
		this._attempt = 0;
		this.emit('warning', `the server refused identity ${clientId}; taking a new one`);
	}

	/** A WebSocket attempt failed before opening: retry it, or switch to the event stream. */
	private socketFailed(): void {
		this.socketFailures += 1;
		const after = this.options.fallbackAfter ?? 2;
		const noWebSocket = this.options.socketFactory === undefined && typeof WebSocket === 'undefined';
		const fallBack = noWebSocket || (after > 0 && this.socketFailures >= after && this.socketsOpened === 0);
		if (fallBack && this.hasEventSource()) {
			this._transport = 'eventsource';
			this._attempt = 0;
			this.open();
			return;
		}
		this.scheduleReconnect();
	}

	private scheduleReconnect(): void {
		this._attempt += 1;
		const maxAttempts = this.options.maxAttempts ?? Infinity;
		if (this._attempt > maxAttempts) {
			this._nextAttemptAt = null;
			this.transition('closed');
			return;
		}
		const delay =
			this.refused !== null && this._attempt === 1
				? 0
				: backoffDelay(this._attempt, this.options.backoff, this.options.random ?? Math.random);
		this._nextAttemptAt = Date.now() + delay;
		this.transition('waiting');
		this.retryTimer = setTimeout(() => {
			this.retryTimer = null;
			this.open();
		}, delay);
	}

	private clearRetry(): void {
		if (this.retryTimer !== null) clearTimeout(this.retryTimer);
		this.retryTimer = null;
		this._nextAttemptAt = null;
	}

	private startHeartbeat(): void {
		this.stopHeartbeat();
		const every = this.options.heartbeatMs ?? 25000;
		if (every <= 0) return;
		this.heartbeatTimer = setInterval(() => {
			const socket = this.link?.kind === 'websocket' ? this.link.socket : null;
			this.ping().catch(() => {
				// No answer: the connection is dead even if the browser has not noticed.
				if (socket !== null && this.isCurrent(socket)) {
					try {
						socket.close(4000, 'heartbeat timed out');
					} catch {
						// ignore
					}
					this.handleClose(socket, 4000, 'heartbeat timed out');
				}
			});
		}, every);
	}

	private stopHeartbeat(): void {
		if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
		this.heartbeatTimer = null;
	}

	private failPings(error: Error): void {
		const pings = this.pings;
		this.pings = [];
		for (const ping of pings) {
			clearTimeout(ping.timer);
			ping.reject(error);
		}
	}

	// --- internals: the event stream ---

	private hasEventSource(): boolean {
		return this.options.eventSourceFactory !== undefined || typeof EventSource !== 'undefined';
	}

	private makeSource(url: string): EventSourceLike {
		if (this.options.eventSourceFactory) return this.options.eventSourceFactory(url);
		return new EventSource(url) as unknown as EventSourceLike;
	}

	private openSource(): void {
		this.transition('opening');
		const identity = this.claim;
		if (identity !== null && this.options.streamCookie === true && this.endpoints.eventsOnPageOrigin()) {
			// The id goes in a cookie, not in the URL (access logs write URLs down).
			const generation = this.generation;
			this.sourcePending = true;
			void this.streamKey(identity.clientId).then((key) => {
				if (generation !== this.generation || !this.sourcePending) return; // closed meanwhile
				this.sourcePending = false;
				if (key === 'failed') this.scheduleReconnect();
				else this.attachSource(identity, key === 'refused' ? null : key);
			});
			return;
		}
		this.attachSource(identity, null);
	}

	/**
	 * The stream key whose cookie names `clientId` (`POST /api/events`); `refused` when the
	 * server does not take the id (the stream then names it, is refused, and the client
	 * takes a new one as usual), `failed` when the server could not be asked.
	 */
	private async streamKey(clientId: string): Promise<string | 'refused' | 'failed'> {
		if (this.options.fetch === undefined && typeof fetch === 'undefined') return 'refused';
		try {
			const headers = await this.headers({ Accept: 'application/json', 'X-Client-Id': clientId });
			const response = await this.fetch(this.endpoints.eventsBase(), {
				method: 'POST',
				headers,
				credentials: 'same-origin'
			});
			if (response.status === 403) return 'refused';
			if (!response.ok) return 'failed';
			const body: unknown = await response.json();
			const key = (body as { stream?: unknown } | null)?.stream;
			return typeof key === 'string' && /^[0-9a-f]{1,64}$/.test(key) ? key : 'failed';
		} catch {
			return 'failed';
		}
	}

	private attachSource(identity: StoredIdentity | null, streamKey: string | null): void {
		let source: EventSourceLike;
		try {
			source = this.makeSource(this.endpoints.events(identity, this.store.complete, streamKey));
		} catch {
			this.scheduleReconnect();
			return;
		}
		const link: Link = { kind: 'eventsource', source, claimed: identity?.clientId ?? null, announced: false };
		this.link = link;
		for (const type of SERVER_MESSAGE_TYPES) {
			source.addEventListener(type, (ev) => {
				if (this.link !== link) return;
				if (typeof ev.data === 'string') {
					this.handleData(ev.data);
				} else if (type === 'error') {
					// An `error` without data is the stream's own, not a server message.
					this.handleSourceError(link);
				}
			});
		}
	}

	private handleSourceError(link: Extract<Link, { kind: 'eventsource' }>): void {
		this._closeCode = null;
		this._closeReason = '';
		if (link.source.readyState === SOURCE_CLOSED) {
			// The browser gave up (an answer other than a stream, e.g. 403 for an identity the
			// server does not know, or 503): open a new one, with the current lastSeq.
			this.link = null;
			if (link.claimed !== null && !link.announced) {
				this.checkIdentityThenReconnect(link.claimed);
			} else {
				this.scheduleReconnect();
			}
			return;
		}
		if (link.claimed !== (this._identity?.clientId ?? null)) {
			// The browser would reconnect to a URL without this identity (it was minted on this
			// stream) and be given yet another one: reconnect ourselves, naming it.
			this.dropLink(1000, '');
			this.scheduleReconnect();
			return;
		}
		// The browser reconnects by itself and sends Last-Event-ID, which resumes.
		this.transition('waiting');
	}

	/**
	 * An event stream that names an identity was refused before it announced anything. An
	 * `EventSource` does not tell why; ask the HTTP API, which answers 403 for an identity
	 * the server did not issue (e.g. it restarted with a new secret), and take a new one then.
	 */
	private checkIdentityThenReconnect(clientId: string): void {
		const generation = this.generation;
		const proceed = (refused: boolean) => {
			if (generation !== this.generation || this.link !== null || this.retryTimer !== null) return;
			if (refused && this._identity?.clientId === clientId) this.refuse(clientId);
			this.scheduleReconnect();
		};
		if (this.options.fetch === undefined && typeof fetch === 'undefined') {
			proceed(false);
			return;
		}
		this.headers({ Accept: 'application/json', 'X-Client-Id': clientId })
			.then((headers) => this.fetch(this.endpoints.route('/api/tasks'), { headers }))
			.then(
				(response) => proceed(response.status === 403),
				() => proceed(false)
			);
	}

	private pingOverHttp(): Promise<number> {
		const send = async (signal: AbortSignal | undefined) => {
			const init: RequestInit = { headers: await this.headers({ Accept: 'application/json' }), cache: 'no-store' };
			if (signal !== undefined) init.signal = signal;
			return this.fetch(this.endpoints.route('/health'), init);
		};
		return timeRequest(send, this.options.pingTimeoutMs ?? 10000, () => this.now());
	}

	private send(message: ClientMessage): void {
		const socket = this.link?.kind === 'websocket' ? this.link.socket : null;
		if (socket === null || socket.readyState !== OPEN) return;
		socket.send(JSON.stringify(message));
	}

	// --- internals: messages ---

	private handleMessage(socket: SocketLike, data: unknown): void {
		if (!this.isCurrent(socket)) return;
		this.handleData(data);
	}

	/** One server message, from either transport (the event stream's `data` is the same JSON). */
	private handleData(data: unknown): void {
		const message = parseServerMessage(data);
		if (message === null) {
			this.emit('warning', 'ignored a frame that is not a known server message');
			return;
		}
		switch (message.type) {
			case 'connection':
				this.onConnection(message);
				break;
			case 'snapshot':
				if (this.phase === 'resuming') break; // belongs to the throwaway identity of this socket
				this.replaceTasks(message.tasks, message.seq);
				break;
			case 'taskQueued':
			case 'taskProgress':
				if (this.phase === 'resuming') break;
				this.onEvent(message.seq, message.task);
				break;
			case 'pong':
				this.onPong();
				break;
			case 'error':
				this.emit('warning', `server: ${message.code}: ${message.message}`);
				break;
		}
		this.emit('message', message);
	}

	private onConnection(message: ConnectionMessage): void {
		const answersResume = message.recovered !== undefined;
		if (this.phase === 'resuming' && !answersResume) {
			// The greeting of a new socket; our resume is on its way. Keep the stored identity.
			this._socketId = message.socketId;
			return;
		}
		const link = this.link;
		const previous = this._identity;
		// On the event stream the URL named the identity: getting it back is a resume, with
		// or without `recovered` (without `lastEventId` the server just sends a snapshot).
		const claimed = link?.kind === 'eventsource' && link.claimed !== null;
		const resumed = (answersResume || claimed) && previous !== null && message.clientId === previous.clientId;
		const replaced = this.refused !== null;
		if (!resumed) {
			// A new identity: nothing of an older one applies to it.
			if (previous !== null && previous.clientId !== message.clientId) {
				this.store.clear(`the identity ${previous.clientId} was replaced by ${message.clientId}`);
			}
			this._identity = { clientId: message.clientId, lastSeq: 0 };
			this.store.complete = false; // until its snapshot
			this.emit('tasks', this.tasks);
		}
		this.refused = null;
		if (link?.kind === 'eventsource') link.announced = true;
		this.saveIdentity();
		this.transition('connected');
		this._socketId = message.socketId;
		this.emit('identity', {
			socketId: message.socketId,
			clientId: message.clientId,
			resumed,
			recovered: answersResume ? (message.recovered ?? null) : null,
			replaced
		});
		const waiters = this.identityWaiters;
		this.identityWaiters = [];
		for (const wake of waiters) wake();
	}

	private onEvent(seq: number, task: TaskView): void {
		const identity = this._identity;
		if (identity === null) return;
		if (seq <= identity.lastSeq) return; // already applied (a replay overlapping what we had)
		if (seq > identity.lastSeq + 1 && identity.lastSeq > 0) {
			this.emit('warning', `missed events ${identity.lastSeq + 1}–${seq - 1}; refreshing the task list`);
			this.list().catch(() => undefined);
		}
		identity.lastSeq = seq;
		this.store.apply(task);
		this.saveIdentity();
		this.emit('tasks', this.tasks);
	}

	private onPong(): void {
		const ping = this.pings.shift();
		if (ping === undefined) return;
		clearTimeout(ping.timer);
		ping.resolve(Math.max(0, this.now() - ping.sentAt));
	}

	private replaceTasks(tasks: TaskView[], seq: number): void {
		this.store.replace(tasks);
		if (this._identity !== null) {
			this._identity.lastSeq = seq;
			this.saveIdentity();
		}
		this.emit('tasks', this.tasks);
	}

	/** A view from an HTTP answer: shown (and kept) only if newer than what the list has. */
	private upsert(task: TaskView): void {
		if (!this.store.merge(task)) return;
		this.saveIdentity();
		this.emit('tasks', this.tasks);
	}

	// --- internals: identity ---

	private loadIdentity(): StoredIdentity | null {
		const storage = this.options.storage;
		if (!storage) return null;
		try {
			const raw = storage.getItem(this.storageKey);
			if (raw === null) return null;
			const value = JSON.parse(raw) as Partial<StoredIdentity>;
			if (typeof value.clientId !== 'string' || value.clientId === '') return null;
			const identity: StoredIdentity = {
				clientId: value.clientId,
				lastSeq: typeof value.lastSeq === 'number' && value.lastSeq >= 0 ? Math.floor(value.lastSeq) : 0
			};
			if (Array.isArray(value.tasks) && this.options.persistTasks !== false) this.store.restore(value.tasks);
			return identity;
		} catch {
			return null;
		}
	}

	private saveIdentity(): void {
		const storage = this.options.storage;
		if (!storage || this._identity === null) return;
		const stored: StoredIdentity = { ...this._identity };
		if (this.options.persistTasks !== false && this.store.complete) {
			stored.tasks = this.tasks.slice(0, MAX_STORED_TASKS);
		}
		try {
			storage.setItem(this.storageKey, JSON.stringify(stored));
		} catch {
			// storage full or forbidden: the identity just won't survive a reload
		}
	}

	private async identity(): Promise<string> {
		if (this.phase === 'connected' && this._identity !== null) return this._identity.clientId;
		await new Promise<void>((resolve, reject) => {
			const timer = setTimeout(() => {
				this.identityWaiters = this.identityWaiters.filter((w) => w !== wake);
				reject(new Error('not connected: no identity yet'));
			}, this.options.identityTimeoutMs ?? 10000);
			const wake = () => {
				clearTimeout(timer);
				resolve();
			};
			this.identityWaiters.push(wake);
		});
		if (this._identity === null) throw new Error('not connected: no identity yet');
		return this._identity.clientId;
	}

	private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
		for (const listener of [...this.listeners[event]]) {
			try {
				listener(value);
			} catch (error) {
				console.error(`progressq: a '${event}' listener threw`, error);
			}
		}
	}
}

function detach(socket: SocketLike): void {
	socket.onopen = null;
	socket.onmessage = null;
	socket.onclose = null;
	socket.onerror = null;
}
