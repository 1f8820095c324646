/**
 * progressq browser client — one file, no dependencies beyond the browser.
 *
 * Copy it into any app that talks to a progressq server. It speaks the wire contract
 * (PROTOCOL.md): it connects to the WebSocket, takes its identity back after every
 * reconnect (`resume` with the last `seq` it saw), reconnects by itself with exponential
 * backoff and jitter, keeps the identity's task list current, and starts, cancels and
 * lists tasks over HTTP.
 *
 * Where a WebSocket cannot be opened — the environment has none, or `fallbackAfter`
 * (default 2) attempts in a row fail before the socket ever opens, as behind a proxy that
 * drops the upgrade — it switches to the event stream (`GET /api/events`, SSE) for good and
 * carries the same identity and messages there. A WebSocket that opened once and drops later
 * is not a reason to switch: it reconnects as usual.
 *
 * ```ts
 * const client = new ProgressQClient({ storage: sessionStorage });
 * client.on('tasks', (tasks) => render(tasks));
 * client.on('status', (s) => showStatus(s.state));
 * client.connect();
 * await client.start('resize photos', 5000);
 * ```
 */

// --- wire types (PROTOCOL.md) ----------------------------------------------------------

export type TaskStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

export const TERMINAL_STATUSES: ReadonlySet<TaskStatus> = new Set(['completed', 'failed', 'cancelled']);

/** What a client sees of one task. Timestamps are ISO 8601 UTC. */
export interface TaskView {
	id: string;
	name: string;
	status: TaskStatus;
	/** 0–100, never decreasing within an attempt. */
	progress: number;
	message: string;
	createdAt: string;
	startedAt: string | null;
	finishedAt: string | null;
	attempt: number;
	error?: string;
	result?: unknown;
}

/** Answer to `POST /api/task/start`: the task view plus its owner's identity. */
export interface StartedTask extends TaskView {
	clientId: string;
}

export interface ConnectionMessage {
	type: 'connection';
	/** This connection. */
	socketId: string;
	/** The identity whose events this connection carries. */
	clientId: string;
	/** Present where the identity needs it to be presented again on resume. */
	token?: string;
	serverTime: string;
	/** Only on the answer to a resume: true → missed events follow; false → a snapshot follows. */
	recovered?: boolean;
}

export interface SnapshotMessage {
	type: 'snapshot';
	tasks: TaskView[];
	seq: number;
	recovered: boolean;
}

export interface TaskQueuedMessage {
	type: 'taskQueued';
	seq: number;
	task: TaskView;
}

export interface TaskProgressMessage {
	type: 'taskProgress';
	seq: number;
	task: TaskView;
}

export interface PongMessage {
	type: 'pong';
	serverTime: string;
}

export interface ErrorMessage {
	type: 'error';
	code: string;
	message: string;
}

export type ServerMessage =
	| ConnectionMessage
	| SnapshotMessage
	| TaskQueuedMessage
	| TaskProgressMessage
	| PongMessage
	| ErrorMessage;

export interface PingRequest {
	type: 'ping';
}

export interface ResumeRequest {
	type: 'resume';
	clientId: string;
	token?: string;
	lastSeq?: number;
}

export interface CancelRequest {
	type: 'cancel';
	taskId: string;
}

export type ClientMessage = PingRequest | ResumeRequest | CancelRequest;

/** Body of every HTTP error answer. */
export interface ErrorBody {
	error: { code: string; message: string; field?: string };
}

// --- client-side types --------------------------------------------------------------

/**
 * - `idle`: not started yet;
 * - `connecting`: the first connection is being made;
 * - `connected`: the socket is open and the identity is known;
 * - `reconnecting`: the connection was lost, a new one is scheduled or being made;
 * - `disconnected`: closed on purpose (`close()`), or retries ran out.
 */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/** How the client receives events: a WebSocket, or the event stream (SSE) as a fallback. */
export type Transport = 'websocket' | 'eventsource';

export interface StatusEvent {
	state: ConnectionState;
	/** The transport in use (or being connected). */
	transport: Transport;
	/** Consecutive failed attempts since the last good connection. */
	attempt: number;
	/** When `reconnecting` and waiting: epoch ms of the next attempt. */
	nextAttemptAt: number | null;
	/** Why the last connection ended, when it did. */
	closeCode: number | null;
	closeReason: string;
}

export interface IdentityEvent {
	socketId: string;
	clientId: string;
	/** True when this connection took an earlier identity back (`resume`). */
	resumed: boolean;
	/** The server's answer to the resume: missed events replayed (true) or snapshot (false). */
	recovered: boolean | null;
	/** True when a stored identity was refused and a new one was taken instead. */
	replaced: boolean;
}

export interface ClientEvents {
	status: StatusEvent;
	identity: IdentityEvent;
	/** The identity's tasks, newest first, after every change. */
	tasks: TaskView[];
	/** Every message from the server, after the client has applied it. */
	message: ServerMessage;
	/** Something went wrong that the app may want to show (bad frame, seq gap, ...). */
	warning: string;
}

export type Listener<T> = (value: T) => void;

/**
 * What is kept between page loads (in `sessionStorage`, so: per tab). `tasks` is the task
 * list as of `lastSeq`, so that a reloaded page shows it at once and a resume with
 * `lastSeq` only has to bring what came after.
 */
export interface StoredIdentity {
	clientId: string;
	token?: string;
	lastSeq: number;
	tasks?: TaskView[];
}

/** The parts of `Storage` the client uses. */
export interface KeyValueStorage {
	getItem(key: string): string | null;
	setItem(key: string, value: string): void;
	removeItem(key: string): void;
}

/** The parts of a WebSocket the client uses; the browser's `WebSocket` fits. */
export interface SocketLike {
	readonly readyState: number;
	onopen: ((ev: unknown) => void) | null;
	onmessage: ((ev: { data: unknown }) => void) | null;
	onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
	onerror: ((ev: unknown) => void) | null;
	send(data: string): void;
	close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string) => SocketLike;

/** A message or error event of an event stream; server messages carry their JSON in `data`. */
export interface EventStreamEvent {
	data?: unknown;
}

/**
 * The parts of an `EventSource` the client uses; the browser's `EventSource` fits.
 * `readyState`: 0 connecting (also while the browser reconnects by itself), 1 open,
 * 2 closed (the browser gave up).
 */
export interface EventSourceLike {
	readonly readyState: number;
	addEventListener(type: string, listener: (ev: EventStreamEvent) => void): void;
	close(): void;
}

export type EventSourceFactory = (url: string) => EventSourceLike;

export interface BackoffOptions {
	/** Delay before the first retry, ms. Default 500. */
	initialMs?: number;
	/** Upper bound of the delay, ms. Default 15000. */
	maxMs?: number;
	/** Growth per failed attempt. Default 2. */
	factor?: number;
	/** Share of the delay that is random, 0–1. Default 0.5 ("equal jitter"). */
	jitter?: number;
}

export interface ClientOptions {
	/** WebSocket URL. Default: `/ws` on the page's origin (ws: or wss:). */
	url?: string;
	/** Prefix of HTTP paths. Default: '' (same origin). */
	baseUrl?: string;
	/** Makes a socket. Default: `new WebSocket(url)`. */
	socketFactory?: SocketFactory;
	/** Event stream URL, the fallback transport. Default: `baseUrl` + '/api/events'. */
	eventsUrl?: string;
	/** Makes an event stream. Default: `new EventSource(url)` where the browser has one. */
	eventSourceFactory?: EventSourceFactory;
	/**
	 * Name the identity of an event stream with a cookie instead of in its URL (URLs are
	 * written by access logs): `POST /api/events` with `X-Client-Id` sets the cookie, then
	 * the stream opens with `?stream=<key>`. Only for an event stream on the page's own
	 * origin (the cookie is not sent elsewhere); if the POST fails, the URL names the id as
	 * before. Default false.
	 */
	streamCookie?: boolean;
	/**
	 * WebSocket attempts in a row that fail before the socket opens, after which the client
	 * switches to the event stream (when it has one). 0 never switches, except where there is
	 * no WebSocket at all. Default 2: one failure may be a server restarting, two in a row
	 * with no socket ever opened look like a network that does not let WebSockets through.
	 */
	fallbackAfter?: number;
	/** Default: the global `fetch`. */
	fetch?: typeof fetch;
	/** Where the identity is kept across page loads. Default: none (nothing kept). */
	storage?: KeyValueStorage | null;
	/** Key in `storage`. Default 'progressq.identity'. */
	storageKey?: string;
	/**
	 * Keep the task list in `storage` too (default true). Without it a reloaded page resumes
	 * without `lastSeq` and gets a snapshot instead of the missed events.
	 */
	persistTasks?: boolean;
	backoff?: BackoffOptions;
	/** Attempts after which the client gives up and goes `disconnected`. Default: never. */
	maxAttempts?: number;
	/** A ping every so many ms detects a dead connection; 0 turns it off. Default 25000. */
	heartbeatMs?: number;
	/** A ping not answered within this many ms fails (and a heartbeat closes the socket). Default 10000. */
	pingTimeoutMs?: number;
	/** How long `start`/`cancel`/`list` wait for an identity before failing, ms. Default 10000. */
	identityTimeoutMs?: number;
	/** Source of randomness for jitter, [0, 1). Default Math.random. */
	random?: () => number;
	/** Monotonic clock for round-trip times, ms. Default performance.now. */
	now?: () => number;
}

/** An HTTP call answered with an error; `code`/`field` come from the server's error body. */
export class ProgressQHttpError extends Error {
	readonly status: number;
	readonly code: string;
	readonly field: string | undefined;

	constructor(status: number, code: string, message: string, field?: string) {
		super(message);
		this.name = 'ProgressQHttpError';
		this.status = status;
		this.code = code;
		this.field = field;
	}
}

// --- pure helpers (exported for tests and for apps) -------------------------------------

const DEFAULT_BACKOFF: Required<BackoffOptions> = { initialMs: 500, maxMs: 15000, factor: 2, jitter: 0.5 };

/**
 * Delay before retry number `attempt` (1-based): exponential, capped, with jitter.
 * With `jitter` j the delay lies in `[base·(1−j), base]`, so retries never bunch up
 * and never come sooner than half the base delay (with the default j = 0.5).
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
	const { initialMs, maxMs, factor, jitter } = { ...DEFAULT_BACKOFF, ...options };
	const exponent = Math.max(0, attempt - 1);
	const base = Math.min(maxMs, initialMs * Math.pow(factor, exponent));
	const j = Math.min(1, Math.max(0, jitter));
	return Math.round(base * (1 - j) + base * j * random());
}

const STATUS_RANK: Record<TaskStatus, number> = { queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };

/** True when `incoming` is a later state of the task than `current`. */
export function isNewerTask(incoming: TaskView, current: TaskView | undefined): boolean {
	if (current === undefined) return true;
	if (incoming.attempt !== current.attempt) return incoming.attempt > current.attempt;
	const rank = STATUS_RANK[incoming.status] - STATUS_RANK[current.status];
	if (rank !== 0) return rank > 0;
	return incoming.progress >= current.progress;
}

export function isTerminal(status: TaskStatus): boolean {
	return TERMINAL_STATUSES.has(status);
}

/** The default WebSocket URL for a page served by the progressq server (or a proxy). */
export function defaultSocketUrl(location: { protocol: string; host: string }, path = '/ws'): string {
	return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${path}`;
}

function parseServerMessage(data: unknown): ServerMessage | null {
	if (typeof data !== 'string') return null;
	let value: unknown;
	try {
		value = JSON.parse(data);
	} catch {
		return null;
	}
	if (typeof value !== 'object' || value === null) return null;
	const type = (value as { type?: unknown }).type;
	switch (type) {
		case 'connection':
		case 'snapshot':
		case 'taskQueued':
		case 'taskProgress':
		case 'pong':
		case 'error':
			return value as ServerMessage;
		default:
			return null;
	}
}

const OPEN = 1;
const SOURCE_CLOSED = 2;
const MAX_STORED_TASKS = 200;
const MESSAGE_TYPES: ReadonlyArray<ServerMessage['type']> = [
	'connection',
	'snapshot',
	'taskQueued',
	'taskProgress',
	'pong',
	'error'
];

// --- the client -------------------------------------------------------------------------

interface PendingPing {
	sentAt: number;
	resolve: (rtt: number) => void;
	reject: (error: Error) => void;
	timer: ReturnType<typeof setTimeout>;
}

export class ProgressQClient {
	private readonly options: ClientOptions;
	private readonly listeners: { [K in keyof ClientEvents]: Set<Listener<ClientEvents[K]>> } = {
		status: new Set(),
		identity: new Set(),
		tasks: new Set(),
		message: new Set(),
		warning: new Set()
	};

	private socket: SocketLike | null = null;
	private source: EventSourceLike | null = null;
	/** The identity the current event stream's URL names (null: it asked for a new one). */
	private sourceClientId: string | null = null;
	/** The current event stream has announced its identity (a `connection` message). */
	private sourceAnnounced = false;
	private _transport: Transport;
	/** Some WebSocket of this client has opened: it never falls back then. */
	private socketEverOpened = false;
	/** The current socket has opened. */
	private socketOpened = false;
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

	private _state: ConnectionState = 'idle';
	private _attempt = 0;
	private _nextAttemptAt: number | null = null;
	private _closeCode: number | null = null;
	private _closeReason = '';
	private _socketId: string | null = null;
	private _identity: StoredIdentity | null = null;
	/** A resume was sent on this socket and not answered yet. */
	private resumePending = false;
	/** The identity currently claimed by the open socket is confirmed by the server. */
	private confirmed = false;
	/** The last resume was refused: the next connection takes a fresh identity. */
	private replacing = false;
	/** The task list is complete as of `lastSeq` (so a resume may ask for what came after only). */
	private _synced = false;
	/** Some connection of this client has been confirmed. */
	private confirmedOnce = false;
	private readonly tasksById = new Map<string, TaskView>();

	constructor(options: ClientOptions = {}) {
		this.options = options;
		this._identity = this.loadIdentity();
		this._transport =
			options.socketFactory === undefined && typeof WebSocket === 'undefined' && this.hasEventSource()
				? 'eventsource'
				: 'websocket';
	}

	// --- state ---

	get state(): ConnectionState {
		return this._state;
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
		return this._synced;
	}

	/** The identity's tasks, newest first. */
	get tasks(): TaskView[] {
		return [...this.tasksById.values()].sort(
			(a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id)
		);
	}

	on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
		this.listeners[event].add(listener);
		return () => this.listeners[event].delete(listener);
	}

	// --- connection ---

	/** Opens the connection (and keeps it open until `close()`). */
	connect(): void {
		if (this.socket !== null || this.source !== null || this.retryTimer !== null || this.sourcePending) return;
		this.generation += 1;
		this._attempt = 0;
		this.open('connecting');
	}

	/** Closes the connection for good; no reconnect follows. */
	close(): void {
		this.generation += 1;
		this.sourcePending = false;
		this.clearRetry();
		this.stopHeartbeat();
		this.closeSource();
		const socket = this.socket;
		this.socket = null;
		if (socket !== null) {
			this.detach(socket);
			try {
				socket.close(1000, 'client closed');
			} catch {
				// already closed
			}
		}
		this.failPings(new Error('connection closed'));
		this.setState('disconnected');
	}

	/** Skips the wait of a scheduled reconnect (e.g. when the browser comes back online). */
	reconnectNow(): void {
		if (this.retryTimer === null) return;
		this.clearRetry();
		this.open('reconnecting');
	}

	/** Forgets the stored identity; the next connection takes a new one. */
	forgetIdentity(): void {
		this._identity = null;
		this._synced = false;
		this.tasksById.clear();
		this.options.storage?.removeItem(this.storageKey);
		this.emit('tasks', this.tasks);
	}

	/**
	 * Pings the server; resolves with the round-trip time in ms. Over the event stream, which
	 * a client cannot write to, it times a `GET /health` instead.
	 */
	ping(): Promise<number> {
		if (this._transport === 'eventsource') {
			if (this.source === null || this._state !== 'connected') return Promise.reject(new Error('not connected'));
			return this.pingOverHttp();
		}
		const socket = this.socket;
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

	// --- HTTP ---

	/** Starts a task owned by this identity. */
	async start(name: string, duration: number): Promise<StartedTask> {
		const task = await this.request<StartedTask>('POST', '/api/task/start', { name, duration });
		// The socket usually delivers `taskQueued` first; if not, show the task now.
		if (!this.tasksById.has(task.id)) {
			const { clientId: _owner, ...view } = task;
			this.upsert(view as TaskView);
		}
		return task;
	}

	/** Cancels a task of this identity. */
	async cancel(taskId: string): Promise<TaskView | null> {
		const answer = await this.request<TaskView | null>('POST', `/api/task/${encodeURIComponent(taskId)}/cancel`);
		if (answer !== null && typeof answer === 'object' && 'id' in answer && 'status' in answer) {
			this.upsert(answer);
		}
		return answer;
	}

	/** Fetches the identity's tasks over HTTP and merges them into the list. */
	async list(): Promise<TaskView[]> {
		const answer = await this.request<TaskView[] | { tasks: TaskView[] }>('GET', '/api/tasks');
		const tasks = Array.isArray(answer) ? answer : answer.tasks;
		let changed = false;
		for (const task of tasks) {
			if (isNewerTask(task, this.tasksById.get(task.id))) {
				this.tasksById.set(task.id, task);
				changed = true;
			}
		}
		if (changed) this.emit('tasks', this.tasks);
		return tasks;
	}

	// --- internals: sockets ---

	private get storageKey(): string {
		return this.options.storageKey ?? 'progressq.identity';
	}

	private now(): number {
		if (this.options.now) return this.options.now();
		return typeof performance !== 'undefined' ? performance.now() : Date.now();
	}

	private url(): string {
		if (this.options.url) return this.options.url;
		if (typeof location === 'undefined') throw new Error('no url given and no page location');
		return defaultSocketUrl(location);
	}

	private makeSocket(url: string): SocketLike {
		if (this.options.socketFactory) return this.options.socketFactory(url);
		return new WebSocket(url) as unknown as SocketLike;
	}

	private open(state: 'connecting' | 'reconnecting'): void {
		if (this._transport === 'eventsource') {
			this.openSource(state);
			return;
		}
		this._nextAttemptAt = null;
		this.setState(state);
		let socket: SocketLike;
		try {
			socket = this.makeSocket(this.url());
		} catch {
			this.socketFailed();
			return;
		}
		this.socket = socket;
		this._socketId = null;
		this.confirmed = false;
		this.resumePending = false;
		this.socketOpened = false;
		socket.onopen = () => this.handleOpen(socket);
		socket.onmessage = (ev) => this.handleMessage(socket, ev.data);
		socket.onclose = (ev) => this.handleClose(socket, ev.code, ev.reason);
		socket.onerror = () => {
			// a close event always follows; nothing to do here
		};
	}

	private detach(socket: SocketLike): void {
		socket.onopen = null;
		socket.onmessage = null;
		socket.onclose = null;
		socket.onerror = null;
	}

	private handleOpen(socket: SocketLike): void {
		if (socket !== this.socket) return;
		this.socketOpened = true;
		this.socketEverOpened = true;
		this.socketFailures = 0;
		const identity = this._identity;
		if (identity !== null && !this.replacing) {
			// Without a complete list, ask for a snapshot rather than for what came after lastSeq.
			const resume: ResumeRequest = { type: 'resume', clientId: identity.clientId };
			if (this._synced) resume.lastSeq = identity.lastSeq;
			if (identity.token !== undefined) resume.token = identity.token;
			this.resumePending = true;
			this.send(resume);
		}
		this.startHeartbeat();
	}

	private handleClose(socket: SocketLike, code: number, reason: string): void {
		if (socket !== this.socket) return;
		this.detach(socket);
		this.socket = null;
		this.stopHeartbeat();
		this.failPings(new Error('connection lost'));
		this._closeCode = code;
		this._closeReason = reason;
		if (this.resumePending && code === 1008) {
			// The server refused the identity (not issued by it, expired, forged):
			// take a new one on the next connection instead of retrying forever.
			this.replacing = true;
			this._attempt = 0;
			this.emit('warning', `the server refused identity ${this._identity?.clientId ?? ''}; taking a new one`);
		}
		this.resumePending = false;
		this.confirmed = false;
		if (this.socketOpened) {
			this.scheduleReconnect();
		} else {
			this.socketFailed();
		}
	}

	/** A WebSocket attempt failed before opening: retry it, or switch to the event stream. */
	private socketFailed(): void {
		this.socketFailures += 1;
		const after = this.options.fallbackAfter ?? 2;
		const noWebSocket = this.options.socketFactory === undefined && typeof WebSocket === 'undefined';
		const fallBack = noWebSocket || (after > 0 && this.socketFailures >= after && !this.socketEverOpened);
		if (fallBack && this.hasEventSource()) {
			this._transport = 'eventsource';
			this._attempt = 0;
			this.open(this._identity !== null && this.confirmedOnce ? 'reconnecting' : 'connecting');
			return;
		}
		this.scheduleReconnect();
	}

	private scheduleReconnect(): void {
		this._attempt += 1;
		const maxAttempts = this.options.maxAttempts ?? Infinity;
		if (this._attempt > maxAttempts) {
			this._nextAttemptAt = null;
			this.setState('disconnected');
			return;
		}
		const delay = this.replacing && this._attempt === 1
			? 0
			: backoffDelay(this._attempt, this.options.backoff, this.options.random ?? Math.random);
		this._nextAttemptAt = Date.now() + delay;
		this.setState('reconnecting');
		this.retryTimer = setTimeout(() => {
			this.retryTimer = null;
			this.open('reconnecting');
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
			const socket = this.socket;
			this.ping().catch(() => {
				// No answer: the connection is dead even if the browser has not noticed.
				if (socket !== null && socket === this.socket) {
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

	/**
	 * The event stream's URL: the identity to take back (`clientId`) and, with a complete
	 * task list, the last event applied (`lastEventId`), so that the server sends what came
	 * after. Without `clientId` the server mints a new identity.
	 */
	private sourceUrl(identity: StoredIdentity | null, streamKey: string | null = null): string {
		const base = this.eventsBase();
		const params: string[] = [];
		if (identity !== null) {
			params.push(
				streamKey !== null ? `stream=${encodeURIComponent(streamKey)}` : `clientId=${encodeURIComponent(identity.clientId)}`
			);
			if (this._synced) params.push(`lastEventId=${identity.lastSeq}`);
		}
		if (params.length === 0) return base;
		return `${base}${base.includes('?') ? '&' : '?'}${params.join('&')}`;
	}

	private eventsBase(): string {
		return this.options.eventsUrl ?? `${this.options.baseUrl ?? ''}/api/events`;
	}

	/** Whether the event stream is on the page's own origin, where its cookie goes along. */
	private sameOriginEvents(): boolean {
		const base = this.eventsBase();
		if (base.startsWith('/') && !base.startsWith('//')) return true;
		if (typeof location === 'undefined') return false;
		try {
			return new URL(base, location.href).origin === location.origin;
		} catch {
			return false;
		}
	}

	/**
	 * The stream key whose cookie names `clientId` (`POST /api/events`); `refused` when the
	 * server does not take the id (the stream then names it, is refused, and the client
	 * takes a new one as usual), `failed` when the server could not be asked.
	 */
	private async streamKey(clientId: string): Promise<string | 'refused' | 'failed'> {
		const doFetch = this.options.fetch ?? (typeof fetch === 'undefined' ? undefined : fetch);
		if (doFetch === undefined) return 'refused';
		try {
			const response = await doFetch(this.eventsBase(), {
				method: 'POST',
				headers: { Accept: 'application/json', 'X-Client-Id': clientId },
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

	private openSource(state: 'connecting' | 'reconnecting'): void {
		this._nextAttemptAt = null;
		this.setState(state);
		const identity = this.replacing ? null : this._identity;
		if (identity !== null && this.options.streamCookie === true && this.sameOriginEvents()) {
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

	private attachSource(identity: StoredIdentity | null, streamKey: string | null): void {
		let source: EventSourceLike;
		try {
			source = this.makeSource(this.sourceUrl(identity, streamKey));
		} catch {
			this.scheduleReconnect();
			return;
		}
		this.source = source;
		this.sourceClientId = identity?.clientId ?? null;
		this.sourceAnnounced = false;
		this._socketId = null;
		this.confirmed = false;
		this.resumePending = false; // the URL names the identity: there is no throwaway one
		for (const type of MESSAGE_TYPES) {
			source.addEventListener(type, (ev) => {
				if (source !== this.source) return;
				if (typeof ev.data === 'string') {
					this.handleData(ev.data);
				} else if (type === 'error') {
					// An `error` without data is the stream's own, not a server message.
					this.handleSourceError(source);
				}
			});
		}
	}

	private handleSourceError(source: EventSourceLike): void {
		this.confirmed = false;
		this._socketId = null;
		this._closeCode = null;
		this._closeReason = '';
		if (source.readyState === SOURCE_CLOSED) {
			// The browser gave up (an answer other than a stream, e.g. 403 for an identity the
			// server does not know, or 503): open a new one, with the current lastSeq.
			this.source = null;
			const claimed = this.sourceClientId;
			if (claimed !== null && !this.sourceAnnounced) {
				this.checkIdentityThenReconnect(claimed);
			} else {
				this.scheduleReconnect();
			}
			return;
		}
		if (this.sourceClientId !== (this._identity?.clientId ?? null)) {
			// The browser would reconnect to a URL without this identity (it was minted on this
			// stream) and be given yet another one: reconnect ourselves, naming it.
			this.closeSource();
			this.scheduleReconnect();
			return;
		}
		// The browser reconnects by itself and sends Last-Event-ID, which resumes.
		this.setState('reconnecting');
	}

	/**
	 * An event stream that names an identity was refused before it announced anything. An
	 * `EventSource` does not tell why; ask the HTTP API, which answers 403 for an identity
	 * the server did not issue (e.g. it restarted with a new secret), and take a new one then.
	 */
	private checkIdentityThenReconnect(clientId: string): void {
		const generation = this.generation;
		const doFetch = this.options.fetch ?? (typeof fetch === 'undefined' ? undefined : fetch);
		const proceed = (refused: boolean) => {
			if (generation !== this.generation || this.source !== null || this.retryTimer !== null) return;
			if (refused && this._identity?.clientId === clientId) {
				this.replacing = true;
				this._attempt = 0;
				this.emit('warning', `the server refused identity ${clientId}; taking a new one`);
			}
			this.scheduleReconnect();
		};
		if (doFetch === undefined) {
			proceed(false);
			return;
		}
		doFetch(`${this.options.baseUrl ?? ''}/api/tasks`, {
			headers: { Accept: 'application/json', 'X-Client-Id': clientId }
		}).then(
			(response) => proceed(response.status === 403),
			() => proceed(false)
		);
	}

	private closeSource(): void {
		const source = this.source;
		this.source = null;
		if (source === null) return;
		try {
			source.close();
		} catch {
			// already closed
		}
	}

	private pingOverHttp(): Promise<number> {
		const doFetch = this.options.fetch ?? fetch;
		const controller = typeof AbortController === 'undefined' ? null : new AbortController();
		const sentAt = this.now();
		return new Promise<number>((resolve, reject) => {
			const timer = setTimeout(() => {
				controller?.abort();
				reject(new Error('ping timed out'));
			}, this.options.pingTimeoutMs ?? 10000);
			const init: RequestInit = { headers: { Accept: 'application/json' }, cache: 'no-store' };
			if (controller !== null) init.signal = controller.signal;
			doFetch(`${this.options.baseUrl ?? ''}/health`, init).then(
				(response) => {
					clearTimeout(timer);
					const rtt = Math.max(0, this.now() - sentAt);
					response.body?.cancel().catch(() => undefined);
					if (response.ok) resolve(rtt);
					else reject(new Error(`server unhealthy (HTTP ${response.status})`));
				},
				(error: unknown) => {
					clearTimeout(timer);
					reject(error instanceof Error ? error : new Error(String(error)));
				}
			);
		});
	}

	private send(message: ClientMessage): void {
		const socket = this.socket;
		if (socket === null || socket.readyState !== OPEN) return;
		socket.send(JSON.stringify(message));
	}

	// --- internals: messages ---

	private handleMessage(socket: SocketLike, data: unknown): void {
		if (socket !== this.socket) return;
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
				if (this.resumePending) break; // belongs to the throwaway identity of this socket
				this.replaceTasks(message.tasks, message.seq);
				break;
			case 'taskQueued':
			case 'taskProgress':
				if (this.resumePending) break;
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
		this._socketId = message.socketId;
		const answersResume = message.recovered !== undefined;
		if (this.resumePending && !answersResume) {
			// The greeting of a new socket; our resume is on its way. Keep the stored identity.
			return;
		}
		const previous = this._identity;
		// On the event stream the URL named the identity: getting it back is a resume, with
		// or without `recovered` (without `lastEventId` the server just sends a snapshot).
		const claimed = this.source !== null && this.sourceClientId !== null;
		const resumed = (answersResume || claimed) && previous !== null && message.clientId === previous.clientId;
		const replaced = this.replacing;
		if (!resumed) {
			// A new identity: nothing of an older one applies to it.
			if (previous !== null && previous.clientId !== message.clientId) this.tasksById.clear();
			this._identity = { clientId: message.clientId, lastSeq: 0 };
			this._synced = false; // until its snapshot
			if (message.token !== undefined) this._identity.token = message.token;
			this.emit('tasks', this.tasks);
		} else if (message.token !== undefined && previous !== null) {
			previous.token = message.token;
		}
		this.resumePending = false;
		this.replacing = false;
		this.confirmed = true;
		this.confirmedOnce = true;
		if (this.source !== null) this.sourceAnnounced = true;
		this._attempt = 0;
		this.saveIdentity();
		this.setState('connected');
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
		this.upsert(task, true);
		this.saveIdentity();
	}

	private onPong(): void {
		const ping = this.pings.shift();
		if (ping === undefined) return;
		clearTimeout(ping.timer);
		ping.resolve(Math.max(0, this.now() - ping.sentAt));
	}

	private replaceTasks(tasks: TaskView[], seq: number): void {
		this.tasksById.clear();
		for (const task of tasks) this.tasksById.set(task.id, task);
		this._synced = true;
		if (this._identity !== null) {
			this._identity.lastSeq = seq;
			this.saveIdentity();
		}
		this.emit('tasks', this.tasks);
	}

	/** Events arrive in order and always win; other sources only if they are newer. */
	private upsert(task: TaskView, fromEvent = false): void {
		if (!fromEvent && !isNewerTask(task, this.tasksById.get(task.id))) return;
		this.tasksById.set(task.id, task);
		if (!fromEvent) this.saveIdentity();
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
			if (typeof value.token === 'string') identity.token = value.token;
			if (Array.isArray(value.tasks) && this.options.persistTasks !== false) {
				for (const task of value.tasks) {
					if (task && typeof task.id === 'string' && typeof task.status === 'string') this.tasksById.set(task.id, task);
				}
				this._synced = true;
			}
			return identity;
		} catch {
			return null;
		}
	}

	private saveIdentity(): void {
		const storage = this.options.storage;
		if (!storage || this._identity === null) return;
		const stored: StoredIdentity = { ...this._identity };
		if (this.options.persistTasks !== false && this._synced) {
			stored.tasks = this.tasks.slice(0, MAX_STORED_TASKS);
		}
		try {
			storage.setItem(this.storageKey, JSON.stringify(stored));
		} catch {
			// storage full or forbidden: the identity just won't survive a reload
		}
	}

	private async identity(): Promise<string> {
		if (this.confirmed && this._identity !== null) return this._identity.clientId;
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

	private async request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
		const clientId = await this.identity();
		const doFetch = this.options.fetch ?? fetch;
		const headers: Record<string, string> = { Accept: 'application/json', 'X-Client-Id': clientId };
		const init: RequestInit = { method, headers };
		if (body !== undefined) {
			headers['Content-Type'] = 'application/json';
			init.body = JSON.stringify(body);
		}
		const response = await doFetch(`${this.options.baseUrl ?? ''}${path}`, init);
		const text = await response.text();
		let value: unknown = null;
		if (text !== '') {
			try {
				value = JSON.parse(text);
			} catch {
				value = null;
			}
		}
		if (!response.ok) {
			const error = (value as Partial<ErrorBody> | null)?.error;
			throw new ProgressQHttpError(
				response.status,
				error?.code ?? `http_${response.status}`,
				error?.message ?? (response.statusText || `HTTP ${response.status}`),
				error?.field
			);
		}
		return value as T;
	}

	private setState(state: ConnectionState): void {
		this._state = state;
		this.emit('status', {
			state,
			transport: this._transport,
			attempt: this._attempt,
			nextAttemptAt: this._nextAttemptAt,
			closeCode: this._closeCode,
			closeReason: this._closeReason
		});
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
