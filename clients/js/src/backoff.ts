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
