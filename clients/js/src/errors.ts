import type { ErrorBody } from './wire.js';

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
