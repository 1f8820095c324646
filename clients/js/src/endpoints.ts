/** Where the client reaches the server: every URL built from `baseUrl` and `prefix` in one place. */
import { SERVER_MESSAGE_TYPES, type ServerMessage } from './wire.js';

/** The default WebSocket URL for a page served by the progressq server (or a proxy). */
export function defaultSocketUrl(location: { protocol: string; host: string }, path = '/ws'): string {
	return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${path}`;
}

/** A server message from a frame's text, or null for anything that is not one. */
export function parseServerMessage(data: unknown): ServerMessage | null {
	if (typeof data !== 'string') return null;
	let value: unknown;
	try {
		value = JSON.parse(data);
	} catch {
		return null;
	}
	if (typeof value !== 'object' || value === null) return null;
	const type = (value as { type?: unknown }).type;
	return (SERVER_MESSAGE_TYPES as ReadonlyArray<unknown>).includes(type) ? (value as ServerMessage) : null;
}

export interface EndpointOptions {
	baseUrl?: string | undefined;
	prefix?: string | undefined;
	url?: string | undefined;
	eventsUrl?: string | undefined;
}

export class Endpoints {
	private readonly base: string;
	private readonly prefix: string;

	constructor(private readonly options: EndpointOptions) {
		this.base = options.baseUrl ?? '';
		this.prefix = options.prefix ?? '';
	}

	/** A progressq route, e.g. `route('/api/tasks')`: under `baseUrl` and `prefix`. */
	route(path: string): string {
		return `${this.base}${this.prefix}${path}`;
	}

	/** Any route of the app (its own too): under `baseUrl` only. */
	app(path: string): string {
		return `${this.base}${path}`;
	}

	/** The WebSocket URL: `url`, else `baseUrl` + `prefix` + '/ws' as ws: or wss:. */
	socket(): string {
		if (this.options.url) return this.options.url;
		const path = `${this.prefix}/ws`;
		if (/^https?:\/\//.test(this.base)) return `${this.base.replace(/^http/, 'ws')}${path}`;
		if (typeof location === 'undefined') throw new Error('no url given and no page location');
		return defaultSocketUrl(location, `${this.base}${path}`);
	}

	/** The event stream's URL without parameters (`POST` here asks for the stream cookie). */
	eventsBase(): string {
		return this.options.eventsUrl ?? this.route('/api/events');
	}

	/** Whether the event stream is on the page's own origin, where its cookie goes along. */
	eventsOnPageOrigin(): boolean {
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
	 * The event stream's URL: the identity to take back (`clientId`) and, with a complete
	 * task list, the last event applied (`lastEventId`), so that the server sends what came
	 * after. Without `clientId` the server mints a new identity.
	 */
	events(
		identity: { clientId: string; lastSeq: number } | null,
		complete: boolean,
		streamKey: string | null = null
	): string {
		const base = this.eventsBase();
		const params: string[] = [];
		if (identity !== null) {
			// With a stream key the identity rides in a cookie `POST /api/events` set, not in the URL.
			params.push(streamKey !== null ? `stream=${encodeURIComponent(streamKey)}` : `clientId=${encodeURIComponent(identity.clientId)}`);
			if (complete) params.push(`lastEventId=${identity.lastSeq}`);
		}
		if (params.length === 0) return base;
		return `${base}${base.includes('?') ? '&' : '?'}${params.join('&')}`;
	}
}
