import { vi } from 'vitest';
import {
	ProgressQClient,
	type ClientOptions,
	type ConnectionState,
	type EventSourceLike,
	type EventStreamEvent,
	type KeyValueStorage,
	type StatusEvent,
	type SocketLike,
	type TaskView
} from '../src/index.js';

// --- fakes -------------------------------------------------------------------------------

export class FakeSocket implements SocketLike {
	static instances: FakeSocket[] = [];
	readyState = 0;
	onopen: ((ev: unknown) => void) | null = null;
	onmessage: ((ev: { data: unknown }) => void) | null = null;
	onclose: ((ev: { code: number; reason: string }) => void) | null = null;
	onerror: ((ev: unknown) => void) | null = null;
	sent: unknown[] = [];
	closedWith: number | null = null;

	constructor(readonly url: string) {
		FakeSocket.instances.push(this);
	}

	static get last(): FakeSocket {
		const socket = FakeSocket.instances.at(-1);
		if (!socket) throw new Error('no socket made');
		return socket;
	}

	send(data: string): void {
		if (this.readyState !== 1) throw new Error('send on a socket that is not open');
		this.sent.push(JSON.parse(data));
	}

	close(code = 1000): void {
		this.closedWith = code;
		this.readyState = 3;
	}

	// server side
	open(): void {
		this.readyState = 1;
		this.onopen?.({});
	}

	receive(message: unknown): void {
		this.onmessage?.({ data: JSON.stringify(message) });
	}

	drop(code = 1006, reason = ''): void {
		this.readyState = 3;
		this.onclose?.({ code, reason });
	}
}

/** An `EventSource` driven by the test: the server side sends messages, loses or ends the stream. */
export class FakeEventSource implements EventSourceLike {
	static instances: FakeEventSource[] = [];
	readyState = 0;
	closed = false;
	private listeners = new Map<string, Array<(ev: EventStreamEvent) => void>>();

	constructor(readonly url: string) {
		FakeEventSource.instances.push(this);
	}

	static get last(): FakeEventSource {
		const source = FakeEventSource.instances.at(-1);
		if (!source) throw new Error('no event source made');
		return source;
	}

	/** The query of the URL the client opened. */
	get query(): Record<string, string> {
		return Object.fromEntries(new URL(this.url, 'http://test').searchParams);
	}

	get path(): string {
		return new URL(this.url, 'http://test').pathname;
	}

	addEventListener(type: string, listener: (ev: EventStreamEvent) => void): void {
		this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
	}

	close(): void {
		this.closed = true;
		this.readyState = 2;
	}

	private dispatch(type: string, ev: EventStreamEvent): void {
		for (const listener of this.listeners.get(type) ?? []) listener(ev);
	}

	// server side: `event: <type>` with `data: <json>`, as the server frames each message
	receive(message: { type: string; [field: string]: unknown }): void {
		this.readyState = 1;
		this.dispatch(message.type, { data: JSON.stringify(message) });
	}

	/** The connection dropped; the browser reconnects by itself (readyState CONNECTING). */
	lose(): void {
		this.readyState = 0;
		this.dispatch('error', {});
	}

	/** The browser gave up (readyState CLOSED), e.g. the server answered 403 or 503. */
	giveUp(): void {
		this.readyState = 2;
		this.dispatch('error', {});
	}
}

export class MemoryStorage implements KeyValueStorage {
	values = new Map<string, string>();
	getItem(key: string): string | null {
		return this.values.get(key) ?? null;
	}
	setItem(key: string, value: string): void {
		this.values.set(key, value);
	}
	removeItem(key: string): void {
		this.values.delete(key);
	}
}

export function task(id: string, overrides: Partial<TaskView> = {}): TaskView {
	return {
		id,
		name: `task ${id}`,
		status: 'running',
		progress: 0,
		message: '',
		createdAt: '2026-01-01T00:00:00Z',
		startedAt: null,
		finishedAt: null,
		attempt: 1,
		...overrides
	};
}

export function greeting(id: string, extra: Record<string, unknown> = {}) {
	return { type: 'connection', socketId: id, clientId: id, serverTime: '2026-01-01T00:00:00Z', ...extra };
}

export function makeClient(options: Partial<ClientOptions> = {}) {
	const states: ConnectionState[] = [];
	const statuses: StatusEvent[] = [];
	const client = new ProgressQClient({
		url: 'ws://test/ws',
		socketFactory: (url) => new FakeSocket(url),
		random: () => 0.5,
		heartbeatMs: 0,
		...options
	});
	client.on('status', (s) => {
		states.push(s.state);
		statuses.push(s);
	});
	return { client, states, statuses };
}

/** A client with the fake event stream available to fall back on. */
export function makeFallbackClient(options: Partial<ClientOptions> = {}) {
	return makeClient({ eventSourceFactory: (url) => new FakeEventSource(url), ...options });
}

/** A client in an environment without WebSocket: it goes straight to the event stream. */
export function makeStreamOnlyClient(options: Partial<ClientOptions> = {}) {
	vi.stubGlobal('WebSocket', undefined);
	return makeFallbackClient({ socketFactory: undefined, ...options });
}
