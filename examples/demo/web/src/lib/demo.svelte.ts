/**
 * The page's state: the progressq client's events turned into Svelte 5 runes.
 *
 * Created during render (also while prerendering, where it stays idle); `start()` runs in
 * the browser only and connects.
 */
import {
	ProgressQClient,
	ProgressQHttpError,
	isTerminal,
	type ConnectionState,
	type IdentityEvent,
	type ServerMessage,
	type StartedTask,
	type StatusEvent,
	type TaskStatus,
	type TaskView,
	type Transport
} from '@progressq/client';

export type LogKind = 'connection' | 'task' | 'error' | 'info';

export interface LogEntry {
	id: number;
	at: Date;
	kind: LogKind;
	text: string;
}

const MAX_LOG = 200;

export class DemoState {
	state = $state<ConnectionState>('idle');
	/** `eventsource` once the client fell back to the event stream. */
	transport = $state<Transport>('websocket');
	attempt = $state(0);
	nextAttemptAt = $state<number | null>(null);
	socketId = $state<string | null>(null);
	clientId = $state<string | null>(null);
	tasks = $state.raw<TaskView[]>([]);
	/** The task list is known (restored or received): "no tasks" may be said. */
	synced = $state(false);
	rtt = $state<number | null>(null);
	pingError = $state<string | null>(null);
	pinging = $state(false);
	log = $state<LogEntry[]>([]);
	/** Per task: an error from the last cancel attempt. */
	cancelErrors = $state<Record<string, string>>({});
	cancelling = $state<Record<string, boolean>>({});

	private client: ProgressQClient | null = null;
	private lastStatus = new Map<string, TaskStatus>();
	private nextLogId = 1;
	private stop: Array<() => void> = [];

	readonly activeCount = $derived(this.tasks.filter((t) => !isTerminal(t.status)).length);

	start(): void {
		if (this.client !== null) return;
		const client = new ProgressQClient({ storage: window.sessionStorage, streamCookie: true });
		this.client = client;
		this.clientId = client.clientId;
		this.transport = client.transport;
		this.setTasks(client.tasks, client.synced, false);
		this.stop.push(
			client.on('status', (s) => this.onStatus(s)),
			client.on('identity', (i) => this.onIdentity(i)),
			client.on('tasks', (tasks) => this.setTasks(tasks, client.synced, true)),
			client.on('message', (m) => this.onMessage(m)),
			client.on('warning', (w) => this.add('error', w))
		);
		const online = () => client.reconnectNow();
		window.addEventListener('online', online);
		this.stop.push(() => window.removeEventListener('online', online));
		if (client.transport === 'eventsource') {
			this.add('info', 'This browser has no WebSocket; using the event stream (SSE)');
		}
		if (client.clientId !== null) {
			this.add('info', `Restored this tab's identity; resuming after event #${client.lastSeq}`);
		}
		client.connect();
	}

	destroy(): void {
		for (const stop of this.stop) stop();
		this.stop = [];
		this.client?.close();
		this.client = null;
	}

	reconnectNow(): void {
		this.client?.reconnectNow();
	}

	async ping(): Promise<void> {
		if (this.client === null) return;
		this.pinging = true;
		this.pingError = null;
		try {
			this.rtt = await this.client.ping();
			this.add('connection', `Pong in ${formatMs(this.rtt)}`);
		} catch (error) {
			this.rtt = null;
			this.pingError = errorText(error);
			this.add('error', `Ping failed: ${this.pingError}`);
		} finally {
			this.pinging = false;
		}
	}

	/** Starts a task; throws with a readable message when the server refuses it. */
	async startTask(name: string, duration: number): Promise<TaskView> {
		if (this.client === null) throw new Error('not connected yet');
		// The demo's own start route (not a library one): its answer is tracked like any task.
		const task = await this.client.request<StartedTask>('POST', '/api/task/start', { name, duration });
		return this.client.track(task).view ?? task;
	}

	async cancel(taskId: string): Promise<void> {
		if (this.client === null) return;
		this.cancelling = { ...this.cancelling, [taskId]: true };
		const { [taskId]: _, ...rest } = this.cancelErrors;
		this.cancelErrors = rest;
		try {
			await this.client.cancel(taskId);
		} catch (error) {
			const text =
				error instanceof ProgressQHttpError && error.status === 409 ? 'already finished' : errorText(error);
			this.cancelErrors = { ...this.cancelErrors, [taskId]: text };
			this.add('error', `Cancel failed: ${text}`);
		} finally {
			const { [taskId]: _done, ...others } = this.cancelling;
			this.cancelling = others;
		}
	}

	// --- events ---

	private onStatus(s: StatusEvent): void {
		const before = this.state;
		if (s.transport !== this.transport) {
			this.transport = s.transport;
			if (s.transport === 'eventsource') this.add('info', 'No WebSocket got through; switched to the event stream (SSE)');
		}
		this.state = s.state;
		this.attempt = s.attempt;
		this.nextAttemptAt = s.nextAttemptAt;
		if (s.state === before && s.state !== 'reconnecting') return;
		switch (s.state) {
			case 'connecting':
				this.add('connection', 'Connecting…');
				break;
			case 'reconnecting':
				if (s.nextAttemptAt !== null) {
					const wait = Math.max(0, s.nextAttemptAt - Date.now());
					const why = before === 'connected' ? `Connection lost (code ${s.closeCode ?? '?'}). ` : '';
					this.add('connection', `${why}Reconnecting in ${formatMs(wait)} (attempt ${s.attempt})`);
				} else if (before === 'connected') {
					this.add('connection', 'Connection lost; the event stream reconnects by itself');
				}
				break;
			case 'disconnected':
				this.add('connection', 'Disconnected');
				break;
			default:
				break;
		}
		if (s.state !== 'connected') this.socketId = null;
	}

	private onIdentity(i: IdentityEvent): void {
		this.socketId = i.socketId;
		this.clientId = i.clientId;
		if (i.replaced) this.add('info', 'The server did not know this tab’s identity any more; took a new one');
		if (i.resumed) {
			const how = i.recovered ? 'missed events replayed' : 'task list refreshed';
			this.add('connection', `Connected as socket ${short(i.socketId)}; resumed identity ${short(i.clientId)} (${how})`);
		} else {
			this.add('connection', `Connected as socket ${short(i.socketId)}; new identity ${short(i.clientId)}`);
		}
	}

	private onMessage(m: ServerMessage): void {
		if (m.type !== 'taskQueued' && m.type !== 'taskProgress') return;
		const task = m.task;
		const before = this.lastStatus.get(task.id);
		this.lastStatus.set(task.id, task.status);
		if (before === task.status) return;
		const name = `“${task.name}”`;
		switch (task.status) {
			case 'queued':
				this.add('task', `Queued ${name}`);
				break;
			case 'running':
				this.add('task', `Started ${name}`);
				break;
			case 'completed':
				this.add('task', `Completed ${name}`);
				break;
			case 'failed':
				this.add('error', `Failed ${name}: ${task.error ?? 'no reason given'}`);
				break;
			case 'cancelled':
				this.add('task', `Cancelled ${name}`);
				break;
		}
	}

	private setTasks(tasks: TaskView[], synced: boolean, live: boolean): void {
		this.tasks = tasks;
		this.synced = synced;
		if (!live) for (const task of tasks) this.lastStatus.set(task.id, task.status);
	}

	private add(kind: LogKind, text: string): void {
		const entry: LogEntry = { id: this.nextLogId++, at: new Date(), kind, text };
		this.log = [entry, ...this.log].slice(0, MAX_LOG);
	}
}

export function short(id: string | null): string {
	if (id === null) return '—';
	return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

export function formatMs(ms: number): string {
	if (ms < 1000) return `${Math.round(ms)} ms`;
	return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

export function errorText(error: unknown): string {
	if (error instanceof Error) return error.message;
	return String(error);
}

/** Form validation, shared by the form and its tests. */
export const DURATION_MIN = 1000;
export const DURATION_MAX = 30000;
export const NAME_MAX = 200;

export function validateName(raw: string): string | null {
	const name = raw.trim();
	if (name.length === 0) return 'Give the task a name.';
	if (name.length > NAME_MAX) return `Keep the name to ${NAME_MAX} characters or fewer.`;
	return null;
}

export function validateDuration(raw: string): string | null {
	const text = raw.trim();
	if (text === '') return 'Enter a duration in milliseconds.';
	if (!/^\d+$/.test(text)) return 'Enter a whole number of milliseconds.';
	const value = Number(text);
	if (value < DURATION_MIN || value > DURATION_MAX) {
		return `Duration must be between ${DURATION_MIN} and ${DURATION_MAX} ms.`;
	}
	return null;
}
