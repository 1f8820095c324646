import type { BackoffOptions } from './backoff.js';
import type { ConnectionState } from './state.js';
import type { ServerMessage, TaskView } from './wire.js';

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

/** Extra headers for every HTTP call, e.g. the app's own `Authorization`. */
export type HeadersHook = () => Record<string, string> | Promise<Record<string, string>>;

export interface ClientOptions {
	/**
	 * Origin (and path) of the server, e.g. `https://api.example.com`. Default '' (the page's
	 * own origin). Every path below is relative to it.
	 */
	baseUrl?: string;
	/** Where the progressq routes are mounted, e.g. '/pq'. Default '' (the root). */
	prefix?: string;
	/** WebSocket URL. Default: `baseUrl` + `prefix` + '/ws', as ws: or wss:. */
	url?: string;
	/** Makes a socket. Default: `new WebSocket(url)`. */
	socketFactory?: SocketFactory;
	/** Event stream URL, the fallback transport. Default: `baseUrl` + `prefix` + '/api/events'. */
	eventsUrl?: string;
	/** Makes an event stream. Default: `new EventSource(url)` where the browser has one. */
	eventSourceFactory?: EventSourceFactory;
	/**
	 * Name the identity of an event stream with a cookie instead of in its URL (URLs are
	 * written by access logs): `POST /api/events` with `X-Client-Id` sets the cookie, then
	 * the stream opens with `?stream=<key>`. Only for an event stream on the page's own
	 * origin (the cookie is not sent elsewhere). An id the server refuses is named in the
	 * URL as before (and refused, then replaced as usual); a server that cannot be asked is
	 * retried without naming the id. Default false.
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
	/**
	 * Headers added to every HTTP call (start, cancel, list, the app's own routes through
	 * `request`, the `/health` ping). For apps whose identity comes from their own login:
	 * return e.g. `{ Authorization: \`Bearer ${token}\` }`; the server's identify hook maps
	 * it to the identity. They override the client's own headers of the same name.
	 */
	headers?: HeadersHook;
	/**
	 * An identity the app got from its server (e.g. issued at login). The client resumes
	 * with it on every connection (WebSocket `resume`, event stream `clientId`) instead of
	 * taking a new one, and sends it as `X-Client-Id`. A stored identity of another id is
	 * dropped.
	 */
	clientId?: string;
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
	/** How long HTTP calls wait for an identity before failing, ms. Default 10000. */
	identityTimeoutMs?: number;
	/** Source of randomness for jitter, [0, 1). Default Math.random. */
	random?: () => number;
	/** Monotonic clock for round-trip times, ms. Default performance.now. */
	now?: () => number;
}
