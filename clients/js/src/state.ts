/**
 * The connection's state machine: every phase, and which phase may follow which.
 *
 * The client holds exactly one `Phase` and changes it only through its `transition()`,
 * which checks this table; what an app sees (`ConnectionState`) is derived from it.
 */

/**
 * - `idle`: `connect()` not called yet;
 * - `opening`: a WebSocket or event stream is being opened;
 * - `resuming`: the WebSocket is open and a `resume` naming the known identity is unanswered
 *   (what arrives meanwhile belongs to the socket's throwaway identity and is ignored);
 * - `greeting`: the WebSocket is open and the server is to announce a new identity;
 * - `connected`: the server confirmed the identity; events apply;
 * - `waiting`: the connection was lost; a reconnect is scheduled (or, on the event stream,
 *   the browser reconnects by itself);
 * - `closed`: `close()` was called, or the retries ran out.
 */
export type Phase = 'idle' | 'opening' | 'resuming' | 'greeting' | 'connected' | 'waiting' | 'closed';

const TRANSITIONS: Readonly<Record<Phase, ReadonlyArray<Phase>>> = {
	idle: ['opening', 'closed'],
	// opening → opening: the client switched from the WebSocket to the event stream;
	// opening → connected: an event stream announces its identity without a handshake.
	opening: ['opening', 'resuming', 'greeting', 'connected', 'waiting', 'closed'],
	resuming: ['connected', 'waiting', 'closed'],
	greeting: ['connected', 'waiting', 'closed'],
	// connected → connected: the server confirmed the identity again (harmless, applied).
	connected: ['connected', 'waiting', 'closed'],
	// waiting → connected: the browser reconnected an event stream by itself.
	waiting: ['opening', 'waiting', 'connected', 'closed'],
	closed: ['opening', 'closed']
};

/** True when the state machine lets `from` be followed by `to`. */
export function canTransition(from: Phase, to: Phase): boolean {
	return TRANSITIONS[from].includes(to);
}

/**
 * What an app sees of the connection:
 * - `idle`: not started yet;
 * - `connecting`: the first connection is being made;
 * - `connected`: the connection is open and the identity is known;
 * - `reconnecting`: the connection was lost, a new one is scheduled or being made;
 * - `disconnected`: closed on purpose (`close()`), or retries ran out.
 */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/**
 * The app-facing state of a phase. `firstTry` is true while the client has neither been
 * connected nor failed since `connect()`: opening then is `connecting`, later `reconnecting`.
 */
export function connectionState(phase: Phase, firstTry: boolean): ConnectionState {
	switch (phase) {
		case 'idle':
			return 'idle';
		case 'opening':
		case 'resuming':
		case 'greeting':
			return firstTry ? 'connecting' : 'reconnecting';
		case 'connected':
			return 'connected';
		case 'waiting':
			return 'reconnecting';
		case 'closed':
			return 'disconnected';
	}
}
