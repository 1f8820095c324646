/** HTTP answers: JSON or an error, and the timed `GET /health` that stands in for a ping. */
import { ProgressQHttpError } from './errors.js';
import type { ErrorBody } from './wire.js';

/**
 * The JSON of an HTTP answer (null when empty or not JSON); an error answer throws
 * `ProgressQHttpError` with what its error body (`{"error": {"code", "message", "field"?}}`) says.
 */
export async function readAnswer<T>(response: Response): Promise<T> {
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

/**
 * Times one request (the event stream's stand-in for a WebSocket ping): resolves with the
 * round-trip time in ms when it answers 2xx within `timeoutMs`, rejects otherwise.
 */
export function timeRequest(
	send: (signal: AbortSignal | undefined) => Promise<Response>,
	timeoutMs: number,
	now: () => number
): Promise<number> {
	const controller = typeof AbortController === 'undefined' ? null : new AbortController();
	const sentAt = now();
	return new Promise<number>((resolve, reject) => {
		const timer = setTimeout(() => {
			controller?.abort();
			reject(new Error('ping timed out'));
		}, timeoutMs);
		send(controller?.signal).then(
			(response) => {
				clearTimeout(timer);
				const rtt = Math.max(0, now() - sentAt);
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
