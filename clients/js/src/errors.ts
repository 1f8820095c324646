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
