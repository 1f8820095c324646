import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
	canTransition,
	connectionState,
	ProgressQClient,
	ProgressQHttpError,
	SERVER_MESSAGE_TYPES,
	TERMINAL_STATUSES,
	type Phase,
	type TaskView
} from '../src/index.js';
import { FakeEventSource, FakeSocket, greeting, makeClient, makeStreamOnlyClient, MemoryStorage, task } from './fakes.js';

beforeEach(() => {
	FakeSocket.instances = [];
	FakeEventSource.instances = [];
	vi.useFakeTimers();
});

afterEach(() => {
	vi.useRealTimers();
	vi.unstubAllGlobals();
});

type FetchCall = [string, RequestInit | undefined];

function recordingFetch(answer: (url: string) => { status: number; body: unknown }) {
	const calls: FetchCall[] = [];
	const fetch = vi.fn(async (url: string, init?: RequestInit) => {
		calls.push([url, init]);
		const { status, body } = answer(url);
		return new Response(JSON.stringify(body), { status });
	});
	return { fetch: fetch as unknown as typeof globalThis.fetch, calls };
}

function connected(options: Parameters<typeof makeClient>[0] = {}) {
	const made = makeClient(options);
	made.client.connect();
	FakeSocket.last.open();
	FakeSocket.last.receive(greeting('me'));
	FakeSocket.last.receive({ type: 'snapshot', tasks: [], seq: 0, recovered: false });
	return made;
}

describe('state machine', () => {
	it('allows only the transitions of the table', () => {
		expect(canTransition('idle', 'opening')).toBe(true);
		expect(canTransition('opening', 'resuming')).toBe(true);
		expect(canTransition('resuming', 'connected')).toBe(true);
		expect(canTransition('idle', 'connected')).toBe(false);
		expect(canTransition('closed', 'connected')).toBe(false);
		expect(canTransition('resuming', 'greeting')).toBe(false);
	});

	it('derives the state an app sees from the phase', () => {
		const phases: Phase[] = ['idle', 'opening', 'resuming', 'greeting', 'connected', 'waiting', 'closed'];
		expect(phases.map((p) => connectionState(p, true))).toEqual([
			'idle',
			'connecting',
			'connecting',
			'connecting',
			'connected',
			'reconnecting',
			'disconnected'
		]);
		expect(connectionState('opening', false)).toBe('reconnecting');
	});

	it('ignores what the socket says while its resume is unanswered, then applies the answer', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'me', lastSeq: 3, tasks: [] }));
		const { client, states } = makeClient({ storage });
		client.connect();
		FakeSocket.last.open();
		expect(FakeSocket.last.sent).toEqual([{ type: 'resume', clientId: 'me', lastSeq: 3 }]);
		FakeSocket.last.receive(greeting('throwaway'));
		FakeSocket.last.receive({ type: 'taskQueued', seq: 1, task: task('foreign') });
		expect(client.state).toBe('connecting');
		expect(client.tasks).toEqual([]);
		FakeSocket.last.receive(greeting('sock', { clientId: 'me', recovered: true }));
		FakeSocket.last.receive({ type: 'taskQueued', seq: 4, task: task('mine') });
		expect(states.at(-1)).toBe('connected');
		expect(client.tasks.map((t) => t.id)).toEqual(['mine']);
		expect(client.lastSeq).toBe(4);
	});
});

describe('per-task API', () => {
	it('task(id) follows the task and done resolves with its terminal view', async () => {
		const { client } = connected();
		const handle = client.task('t1');
		expect(handle.view).toBeUndefined();
		const seen: number[] = [];
		handle.on((view) => seen.push(view.progress));
		FakeSocket.last.receive({ type: 'taskQueued', seq: 1, task: task('t1', { status: 'queued' }) });
		FakeSocket.last.receive({ type: 'taskProgress', seq: 2, task: task('t1', { progress: 50 }) });
		FakeSocket.last.receive({ type: 'taskProgress', seq: 3, task: task('other', { progress: 70 }) });
		FakeSocket.last.receive({
			type: 'taskProgress',
			seq: 4,
			task: task('t1', { status: 'completed', progress: 100, result: { pages: 3 } })
		});
		await expect(handle.done).resolves.toMatchObject({ id: 't1', status: 'completed', result: { pages: 3 } });
		expect(seen).toEqual([0, 50, 100]);
		expect(handle.finished).toBe(true);
		expect(client.task('t1')).not.toBe(handle); // finished handles are not kept
		await expect(client.task('t1').done).resolves.toMatchObject({ status: 'completed' });
	});

	it('a failed task resolves done too, with its error', async () => {
		const { client } = connected();
		const handle = client.task('t1');
		FakeSocket.last.receive({ type: 'taskProgress', seq: 1, task: task('t1', { status: 'failed', error: 'boom' }) });
		await expect(handle.done).resolves.toMatchObject({ status: 'failed', error: 'boom' });
	});

	it('gives the same handle for the same unfinished task', () => {
		const { client } = connected();
		expect(client.task('t1')).toBe(client.task('t1'));
	});

	it('done resolves from a snapshot after a reconnect, when the task ended while away', async () => {
		const { client } = connected({ backoff: { initialMs: 10, jitter: 0 } });
		FakeSocket.last.receive({ type: 'taskQueued', seq: 1, task: task('t1', { status: 'queued' }) });
		const handle = client.task('t1');
		FakeSocket.last.drop();
		vi.advanceTimersByTime(10);
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('sock-2', { clientId: 'me', recovered: false }));
		FakeSocket.last.receive({
			type: 'snapshot',
			tasks: [task('t1', { status: 'cancelled' })],
			seq: 5,
			recovered: false
		});
		await expect(handle.done).resolves.toMatchObject({ status: 'cancelled' });
	});

	it('done rejects when the identity is replaced or forgotten', async () => {
		const { client } = connected();
		const replaced = client.task('t1');
		FakeSocket.last.drop();
		vi.advanceTimersByTime(60_000);
		FakeSocket.last.open();
		// the server answers the resume with another identity: t1's outcome is out of reach
		FakeSocket.last.receive(greeting('someone-else', { recovered: false }));
		await expect(replaced.done).rejects.toThrow('replaced');

		const forgotten = client.task('t2');
		client.forgetIdentity();
		await expect(forgotten.done).rejects.toThrow('forgotten');
	});

	it('start() gives the handle; its events arrive on the socket', async () => {
		const { fetch, calls } = recordingFetch(() => ({
			status: 202,
			body: { ...task('t9', { status: 'queued' }), clientId: 'me' }
		}));
		const { client } = connected({ fetch });
		const handle = await client.start('resize', { width: 10 });
		expect(calls[0]?.[0]).toBe('/api/tasks/resize');
		expect(client.tasks.map((t) => t.id)).toEqual(['t9']);
		FakeSocket.last.receive({ type: 'taskProgress', seq: 1, task: task('t9', { status: 'completed', progress: 100 }) });
		await expect(handle.done).resolves.toMatchObject({ status: 'completed' });
	});

	it('start() rejects with the field the server named', async () => {
		const { fetch } = recordingFetch(() => ({
			status: 422,
			body: { error: { code: 'invalid_field', message: 'Expected `int`, got `str`', field: 'width' } }
		}));
		const { client } = connected({ fetch });
		const error = await client.start('resize', { width: 'x' }).catch((e: unknown) => e);
		expect(error).toBeInstanceOf(ProgressQHttpError);
		expect(error).toMatchObject({ status: 422, code: 'invalid_field', field: 'width' });
		expect(client.tasks).toEqual([]);
	});

	it('track() follows a task started by the app’s own route, called through request()', async () => {
		const { fetch, calls } = recordingFetch(() => ({
			status: 202,
			body: { ...task('t3', { status: 'queued' }), clientId: 'me' }
		}));
		const { client } = connected({ fetch, prefix: '/pq' });
		const started = await client.request<TaskView>('POST', '/api/task/start', { name: 'n', duration: 1000 });
		const handle = client.track(started);
		expect(calls[0]?.[0]).toBe('/api/task/start'); // the app's own route: no prefix
		expect(JSON.parse(String(calls[0]?.[1]?.body))).toEqual({ name: 'n', duration: 1000 });
		expect(handle.view).toMatchObject({ id: 't3', status: 'queued' });
		expect(handle.view).not.toHaveProperty('clientId');
		// an event that arrived first is not overwritten by the older answer
		FakeSocket.last.receive({ type: 'taskProgress', seq: 1, task: task('t4', { progress: 30 }) });
		client.track({ ...task('t4', { status: 'queued' }) });
		expect(client.task('t4').view?.progress).toBe(30);
	});
});

describe('addressing and auth', () => {
	it('puts baseUrl and prefix on every route, the WebSocket URL included', async () => {
		const { fetch, calls } = recordingFetch((url) =>
			url.endsWith('/cancel')
				? { status: 200, body: task('t1', { status: 'cancelled' }) }
				: { status: 200, body: { clientId: 'me', tasks: [] } }
		);
		const client = new ProgressQClient({
			baseUrl: 'https://api.example.com',
			prefix: '/pq',
			socketFactory: (url) => new FakeSocket(url),
			heartbeatMs: 0,
			fetch
		});
		client.connect();
		expect(FakeSocket.last.url).toBe('wss://api.example.com/pq/ws');
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		await client.list();
		await client.cancel('t1');
		expect(calls.map(([url]) => url)).toEqual([
			'https://api.example.com/pq/api/tasks',
			'https://api.example.com/pq/api/task/t1/cancel'
		]);
	});

	it('puts the prefix on the event stream', () => {
		const { client } = makeStreamOnlyClient({ prefix: '/pq' });
		client.connect();
		expect(FakeEventSource.last.path).toBe('/pq/api/events');
	});

	it('the headers hook is applied to every HTTP call and overrides the client’s own', async () => {
		const { fetch, calls } = recordingFetch(() => ({ status: 200, body: { clientId: 'me', tasks: [] } }));
		let token = 'one';
		const { client } = connected({
			fetch,
			headers: async () => ({ Authorization: `Bearer ${token}`, Accept: 'application/vnd.app+json' })
		});
		await client.list();
		token = 'two';
		await client.request('GET', '/app/thing');
		const headers = calls.map(([, init]) => init?.headers as Record<string, string>);
		expect(headers.map((h) => h.Authorization)).toEqual(['Bearer one', 'Bearer two']);
		expect(headers[0]?.Accept).toBe('application/vnd.app+json');
		expect(headers[0]?.['X-Client-Id']).toBe('me');
	});

	it('an app-given clientId is resumed on the WebSocket and replaces another stored one', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'old', lastSeq: 9, tasks: [task('x')] }));
		const { client } = makeClient({ storage, clientId: 'from-login' });
		expect(client.clientId).toBe('from-login');
		expect(client.tasks).toEqual([]);
		client.connect();
		FakeSocket.last.open();
		expect(FakeSocket.last.sent).toEqual([{ type: 'resume', clientId: 'from-login' }]);
	});

	it('an app-given clientId is named in the event stream URL', () => {
		const { client } = makeStreamOnlyClient({ clientId: 'from-login' });
		client.connect();
		expect(FakeEventSource.last.query).toEqual({ clientId: 'from-login' });
	});
});

describe('generated wire types', () => {
	it('carry every server message type and the terminal statuses', () => {
		expect([...SERVER_MESSAGE_TYPES].sort()).toEqual(
			['connection', 'error', 'pong', 'snapshot', 'taskProgress', 'taskQueued'].sort()
		);
		expect([...TERMINAL_STATUSES].sort()).toEqual(['cancelled', 'completed', 'failed']);
	});
});
