import { isNewerTask, TaskHandle } from './tasks.js';
import type { TaskView } from './wire.js';

/**
 * The identity's tasks and the handles that follow them. Every change of a task goes
 * through here, so a handle sees each view the list does.
 */
export class TaskStore {
	/** The list is complete as of the identity's `lastSeq` (a snapshot, or restored). */
	complete = false;
	private readonly byId = new Map<string, TaskView>();
	private readonly handles = new Map<string, TaskHandle>();

	/** The tasks, newest first. */
	get list(): TaskView[] {
		return [...this.byId.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
	}

	/** The handle of a task; one per unfinished task, a fresh (settled) one for a finished task. */
	handle(id: string): TaskHandle {
		const existing = this.handles.get(id);
		if (existing !== undefined) return existing;
		const handle = new TaskHandle(id, this.byId.get(id));
		if (!handle.finished) this.handles.set(id, handle);
		return handle;
	}

	/** An event's view: events arrive in order and always win. */
	apply(task: TaskView): void {
		this.byId.set(task.id, task);
		const handle = this.handles.get(task.id);
		if (handle === undefined) return;
		handle.update(task);
		if (handle.finished) this.handles.delete(task.id);
	}

	/** A view from elsewhere (an HTTP answer): kept only if newer. True when it was. */
	merge(task: TaskView): boolean {
		if (!isNewerTask(task, this.byId.get(task.id))) return false;
		this.apply(task);
		return true;
	}

	/** A snapshot: the whole list, complete. */
	replace(tasks: TaskView[]): void {
		this.byId.clear();
		for (const task of tasks) this.apply(task);
		this.complete = true;
	}

	/** The list as stored before a reload, complete as of the stored `lastSeq`. */
	restore(tasks: unknown[]): void {
		for (const task of tasks) {
			const view = task as Partial<TaskView> | null;
			if (view && typeof view.id === 'string' && typeof view.status === 'string') this.byId.set(view.id, view as TaskView);
		}
		this.complete = true;
	}

	/** Forgets every task; the handles waiting on them fail with `reason`. */
	clear(reason: string): void {
		this.byId.clear();
		this.complete = false;
		const handles = [...this.handles.values()];
		this.handles.clear();
		for (const handle of handles) handle.fail(new Error(reason));
	}
}
