import { TERMINAL_STATUSES, type TaskStatus, type TaskView } from './wire.js';

const STATUS_RANK: Record<TaskStatus, number> = {
	scheduled: 0,
	queued: 0,
	running: 1,
	completed: 2,
	failed: 2,
	cancelled: 2,
};

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

/**
 * One task of the identity, as `client.task(id)` gives it: its latest view, a listener for
 * every change, and `done`, which resolves with the terminal view (completed, failed or
 * cancelled — a failed task resolves too; look at `status`). `done` rejects only when the
 * client can no longer learn the outcome: the identity was forgotten or replaced.
 */
export class TaskHandle {
	readonly id: string;
	/** The terminal view of the task. */
	readonly done: Promise<TaskView>;
	private current: TaskView | undefined;
	private readonly listeners = new Set<(view: TaskView) => void>();
	private settle!: { resolve: (view: TaskView) => void; reject: (error: Error) => void };
	private settled = false;

	constructor(id: string, view?: TaskView) {
		this.id = id;
		this.done = new Promise<TaskView>((resolve, reject) => {
			this.settle = { resolve, reject };
		});
		// A handle nobody awaits must not report an unhandled rejection.
		this.done.catch(() => undefined);
		if (view !== undefined) this.update(view);
	}

	/** The latest view of the task, or undefined while the client has not seen it yet. */
	get view(): TaskView | undefined {
		return this.current;
	}

	/** True once the task reached a terminal status. */
	get finished(): boolean {
		return this.current !== undefined && isTerminal(this.current.status);
	}

	/** Calls `listener` with every new view of the task; returns the function that stops it. */
	on(listener: (view: TaskView) => void): () => void {
		this.listeners.add(listener);
		return () => this.listeners.delete(listener);
	}

	/** @internal The client saw a newer view of the task. */
	update(view: TaskView): void {
		if (this.settled) return;
		this.current = view;
		for (const listener of [...this.listeners]) {
			try {
				listener(view);
			} catch (error) {
				console.error('progressq: a task listener threw', error);
			}
		}
		if (isTerminal(view.status)) {
			this.settled = true;
			this.listeners.clear();
			this.settle.resolve(view);
		}
	}

	/** @internal The client can no longer learn how the task ends. */
	fail(error: Error): void {
		if (this.settled) return;
		this.settled = true;
		this.listeners.clear();
		this.settle.reject(error);
	}
}
