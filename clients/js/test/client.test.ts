import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay, isNewerTask, ProgressQHttpError } from '../src/index.js';
import {
	FakeEventSource,
	FakeSocket,
	greeting,
	makeClient,
	makeFallbackClient,
	makeStreamOnlyClient,
	MemoryStorage,
	task
} from './fakes.js';

beforeEach(() => {
	FakeSocket.instances = [];
	FakeEventSource.instances = [];
	vi.useFakeTimers();
});

afterEach(() => {
	vi.useRealTimers();
	vi.unstubAllGlobals();
});

// --- backoff ----------------------------------------------------------------------------

describe('backoffDelay', () => {
	it('grows exponentially and stops at the cap', () => {
		const top = () => 0.999999;
		const options = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
		expect([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, options, top))).toEqual([100, 200, 400, 800, 1000, 1000]);
	});

	it('jitters between half the base and the base', () => {
		const options = { initialMs: 1000, maxMs: 60000, factor: 2, jitter: 0.5 };
		expect(backoffDelay(3, options, () => 0)).toBe(2000);
		expect(backoffDelay(3, options, () => 0.5)).toBe(3000);
		expect(backoffDelay(3, options, () => 0.999999)).toBe(4000);
	});

	it('with no jitter is deterministic', () => {
		expect(backoffDelay(2, { initialMs: 300, jitter: 0 }, () => 0.123)).toBe(600);
	});
});

// --- reconnect --------------------------------------------------------------------------

describe('reconnect', () => {
	it('reconnects after a drop with growing, jittered delays and resets after success', () => {
		const { client, states } = makeClient({ backoff: { initialMs: 100, maxMs: 10000, factor: 2, jitter: 0.5 } });
		client.connect();
		expect(states).toEqual(['connecting']);
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('a'));
		expect(client.state).toBe('connected');

		FakeSocket.last.drop();
		expect(client.state).toBe('reconnecting');
		expect(FakeSocket.instances).toHaveLength(1);
		// attempt 1: base 100, random 0.5 → 75 ms
		vi.advanceTimersByTime(74);
		expect(FakeSocket.instances).toHaveLength(1);
		vi.advanceTimersByTime(1);
		expect(FakeSocket.instances).toHaveLength(2);

		// the server is still down: attempt 2 → 150 ms, attempt 3 → 300 ms
		FakeSocket.last.drop();
		vi.advanceTimersByTime(149);
		expect(FakeSocket.instances).toHaveLength(2);
		vi.advanceTimersByTime(1);
		expect(FakeSocket.instances).toHaveLength(3);
		FakeSocket.last.drop();
		vi.advanceTimersByTime(299);
		expect(FakeSocket.instances).toHaveLength(3);
		vi.advanceTimersByTime(1);
		expect(FakeSocket.instances).toHaveLength(4);

		// back up: a good connection resets the backoff
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('b', { clientId: 'a', recovered: true }));
		expect(client.state).toBe('connected');
		FakeSocket.last.drop();
		vi.advanceTimersByTime(75);
		expect(FakeSocket.instances).toHaveLength(5);
	});

	it('uses the random source for jitter', () => {
		const delays: number[] = [];
		for (const r of [0, 0.999999]) {
			FakeSocket.instances = [];
			const { client } = makeClient({ random: () => r, backoff: { initialMs: 1000, jitter: 0.5 } });
			client.connect();
			FakeSocket.last.drop();
			let waited = 0;
			while (FakeSocket.instances.length === 1 && waited < 5000) {
				vi.advanceTimersByTime(10);
				waited += 10;
			}
			delays.push(waited);
			client.close();
		}
		expect(delays).toEqual([500, 1000]);
	});

	it('gives up after maxAttempts and reports disconnected', () => {
		const { client } = makeClient({ maxAttempts: 2, backoff: { initialMs: 10, jitter: 0 } });
		client.connect();
		FakeSocket.last.drop();
		vi.advanceTimersByTime(10);
		FakeSocket.last.drop();
		vi.advanceTimersByTime(20);
		expect(FakeSocket.instances).toHaveLength(3);
		FakeSocket.last.drop();
		expect(client.state).toBe('disconnected');
		vi.advanceTimersByTime(100000);
		expect(FakeSocket.instances).toHaveLength(3);
	});

	it('close() stops reconnecting', () => {
		const { client, states } = makeClient();
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('a'));
		const socket = FakeSocket.last;
		client.close();
		expect(socket.closedWith).toBe(1000);
		expect(states.at(-1)).toBe('disconnected');
		vi.advanceTimersByTime(100000);
		expect(FakeSocket.instances).toHaveLength(1);
	});

	it('reconnectNow() skips the wait', () => {
		const { client } = makeClient({ backoff: { initialMs: 5000, jitter: 0 } });
		client.connect();
		FakeSocket.last.drop();
		expect(FakeSocket.instances).toHaveLength(1);
		client.reconnectNow();
		expect(FakeSocket.instances).toHaveLength(2);
		expect(client.state).toBe('reconnecting');
	});

	it('a heartbeat that goes unanswered closes the socket and reconnects', async () => {
		const { client } = makeClient({ heartbeatMs: 1000, pingTimeoutMs: 500, backoff: { initialMs: 100, jitter: 0 } });
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('a'));
		vi.advanceTimersByTime(1000);
		expect(FakeSocket.last.sent).toContainEqual({ type: 'ping' });
		await vi.advanceTimersByTimeAsync(500);
		expect(FakeSocket.instances[0]?.closedWith).toBe(4000);
		expect(client.state).toBe('reconnecting');
		vi.advanceTimersByTime(100);
		expect(FakeSocket.instances).toHaveLength(2);
	});
});

// --- identity, resume, seq --------------------------------------------------------------

describe('resume', () => {
	it('adopts the identity of a first connection and stores it', () => {
		const storage = new MemoryStorage();
		const { client } = makeClient({ storage });
		client.connect();
		FakeSocket.last.open();
		expect(FakeSocket.last.sent).toEqual([]); // nothing to resume
		FakeSocket.last.receive(greeting('id-1'));
		FakeSocket.last.receive({ type: 'snapshot', tasks: [], seq: 0, recovered: false });
		expect(client.clientId).toBe('id-1');
		expect(client.socketId).toBe('id-1');
		expect(JSON.parse(storage.getItem('progressq.identity') ?? 'null')).toEqual({
			clientId: 'id-1',
			lastSeq: 0,
			tasks: []
		});
	});

	it('tracks seq, ignores duplicates, and resumes with lastSeq after a drop', () => {
		const storage = new MemoryStorage();
		const { client } = makeClient({ storage, backoff: { initialMs: 10, jitter: 0 } });
		const identities: unknown[] = [];
		client.on('identity', (i) => identities.push(i));
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		FakeSocket.last.receive({ type: 'snapshot', tasks: [], seq: 0, recovered: false });
		FakeSocket.last.receive({ type: 'taskQueued', seq: 1, task: task('t1', { status: 'queued' }) });
		FakeSocket.last.receive({ type: 'taskProgress', seq: 2, task: task('t1', { progress: 40 }) });
		FakeSocket.last.receive({ type: 'taskProgress', seq: 2, task: task('t1', { progress: 40 }) });
		expect(client.lastSeq).toBe(2);
		expect(client.tasks.map((t) => t.progress)).toEqual([40]);

		FakeSocket.last.drop();
		vi.advanceTimersByTime(10);
		const second = FakeSocket.last;
		second.open();
		expect(second.sent).toEqual([{ type: 'resume', clientId: 'me', lastSeq: 2 }]);

		// greeting of the new socket (fresh throwaway identity) and its snapshot: ignored
		second.receive(greeting('sock-2'));
		second.receive({ type: 'snapshot', tasks: [], seq: 0, recovered: false });
		expect(client.clientId).toBe('me');
		expect(client.tasks).toHaveLength(1);
		expect(client.state).not.toBe('connected');

		// the answer to the resume, then the missed events
		second.receive({ ...greeting('sock-2'), clientId: 'me', recovered: true });
		expect(client.state).toBe('connected');
		expect(client.socketId).toBe('sock-2');
		expect(client.clientId).toBe('me');
		second.receive({ type: 'taskProgress', seq: 2, task: task('t1', { progress: 40 }) }); // overlap
		second.receive({ type: 'taskProgress', seq: 3, task: task('t1', { progress: 90 }) });
		second.receive({ type: 'taskProgress', seq: 4, task: task('t1', { progress: 100, status: 'completed' }) });
		expect(client.lastSeq).toBe(4);
		expect(client.tasks[0]?.status).toBe('completed');
		expect(identities.at(-1)).toMatchObject({ socketId: 'sock-2', clientId: 'me', resumed: true, recovered: true });
		expect(JSON.parse(storage.getItem('progressq.identity') ?? 'null')).toMatchObject({ clientId: 'me', lastSeq: 4 });
	});

	it('replaces the list with the snapshot when the server could not recover', () => {
		const { client } = makeClient({ backoff: { initialMs: 10, jitter: 0 } });
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		FakeSocket.last.receive({ type: 'taskQueued', seq: 1, task: task('old') });
		FakeSocket.last.drop();
		vi.advanceTimersByTime(10);
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('s2'));
		FakeSocket.last.receive({ ...greeting('s2'), clientId: 'me', recovered: false });
		FakeSocket.last.receive({ type: 'snapshot', tasks: [task('t7', { progress: 70 })], seq: 12, recovered: false });
		expect(client.tasks.map((t) => t.id)).toEqual(['t7']);
		expect(client.lastSeq).toBe(12);
		FakeSocket.last.receive({ type: 'taskProgress', seq: 13, task: task('t7', { progress: 80 }) });
		expect(client.tasks[0]?.progress).toBe(80);
	});

	it('after a reload shows the stored tasks at once and resumes after lastSeq', () => {
		const storage = new MemoryStorage();
		const stored = { clientId: 'kept', lastSeq: 5, tasks: [task('t1', { progress: 35 })] };
		storage.setItem('progressq.identity', JSON.stringify(stored));
		const { client } = makeClient({ storage });
		expect(client.clientId).toBe('kept');
		expect(client.synced).toBe(true);
		expect(client.tasks.map((t) => [t.id, t.progress])).toEqual([['t1', 35]]);
		client.connect();
		FakeSocket.last.open();
		expect(FakeSocket.last.sent).toEqual([{ type: 'resume', clientId: 'kept', lastSeq: 5 }]);
		FakeSocket.last.receive({ ...greeting('s9'), clientId: 'kept', recovered: true });
		FakeSocket.last.receive({ type: 'taskProgress', seq: 6, task: task('t1', { progress: 40 }) });
		expect(client.tasks[0]?.progress).toBe(40);
		expect(JSON.parse(storage.getItem('progressq.identity') ?? 'null')).toMatchObject({
			lastSeq: 6,
			tasks: [{ id: 't1', progress: 40 }]
		});
	});

	it('asks for a snapshot when it has the identity but not the task list', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'kept', lastSeq: 5 }));
		const { client } = makeClient({ storage });
		expect(client.synced).toBe(false);
		client.connect();
		FakeSocket.last.open();
		expect(FakeSocket.last.sent).toEqual([{ type: 'resume', clientId: 'kept' }]);
		FakeSocket.last.receive({ ...greeting('s9'), clientId: 'kept', recovered: false });
		FakeSocket.last.receive({ type: 'snapshot', tasks: [task('t1', { progress: 50 })], seq: 9, recovered: false });
		expect(client.synced).toBe(true);
		expect(client.lastSeq).toBe(9);
		expect(client.tasks).toHaveLength(1);
	});

	it('takes a new identity when the server refuses the stored one (close 1008)', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'forged', lastSeq: 5 }));
		const { client } = makeClient({ storage, backoff: { initialMs: 5000, jitter: 0 } });
		const identities: unknown[] = [];
		client.on('identity', (i) => identities.push(i));
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('s1'));
		FakeSocket.last.drop(1008, 'unknown identity');
		// retried at once, without a resume this time
		vi.advanceTimersByTime(0);
		expect(FakeSocket.instances).toHaveLength(2);
		FakeSocket.last.open();
		expect(FakeSocket.last.sent).toEqual([]);
		FakeSocket.last.receive(greeting('fresh'));
		expect(client.clientId).toBe('fresh');
		expect(client.lastSeq).toBe(0);
		expect(identities.at(-1)).toMatchObject({ clientId: 'fresh', resumed: false, replaced: true });
		expect(JSON.parse(storage.getItem('progressq.identity') ?? 'null')).toEqual({ clientId: 'fresh', lastSeq: 0 });
	});

	it('refreshes the list over HTTP when events went missing', async () => {
		const fetch = vi.fn(async () => new Response(JSON.stringify([task('t1', { progress: 60 }), task('t2')])));
		const { client } = makeClient({ fetch: fetch as unknown as typeof globalThis.fetch });
		const warnings: string[] = [];
		client.on('warning', (w) => warnings.push(w));
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		FakeSocket.last.receive({ type: 'snapshot', tasks: [], seq: 3, recovered: false });
		FakeSocket.last.receive({ type: 'taskProgress', seq: 6, task: task('t1', { progress: 50 }) });
		expect(client.lastSeq).toBe(6);
		expect(warnings[0]).toContain('missed events 4–5');
		await vi.waitFor(() => expect(client.tasks).toHaveLength(2));
		expect(fetch).toHaveBeenCalledOnce();
	});

	it('ignores garbage frames and storage it cannot read', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', '{not json');
		const { client } = makeClient({ storage });
		const warnings: string[] = [];
		client.on('warning', (w) => warnings.push(w));
		expect(client.clientId).toBeNull();
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.onmessage?.({ data: 'nonsense' });
		FakeSocket.last.receive({ type: 'surprise' });
		expect(warnings).toHaveLength(2);
	});
});

describe('isNewerTask', () => {
	it('orders by attempt, then status, then progress', () => {
		expect(isNewerTask(task('x', { progress: 50 }), task('x', { progress: 40 }))).toBe(true);
		expect(isNewerTask(task('x', { progress: 30 }), task('x', { progress: 40 }))).toBe(false);
		expect(isNewerTask(task('x', { status: 'queued' }), task('x', { status: 'running' }))).toBe(false);
		expect(isNewerTask(task('x', { status: 'completed', progress: 100 }), task('x', { progress: 99 }))).toBe(true);
		expect(isNewerTask(task('x', { attempt: 2, status: 'queued' }), task('x', { status: 'failed' }))).toBe(true);
	});
});

// --- ping and HTTP ----------------------------------------------------------------------

describe('ping', () => {
	it('resolves with the round-trip time', async () => {
		let clock = 1000;
		const { client } = makeClient({ now: () => clock });
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('a'));
		const rtt = client.ping();
		expect(FakeSocket.last.sent).toEqual([{ type: 'ping' }]);
		clock += 42;
		FakeSocket.last.receive({ type: 'pong', serverTime: '2026-01-01T00:00:00Z' });
		await expect(rtt).resolves.toBe(42);
	});

	it('fails when not connected, on timeout and on a drop', async () => {
		const { client } = makeClient({ pingTimeoutMs: 100 });
		await expect(client.ping()).rejects.toThrow('not connected');
		client.connect();
		FakeSocket.last.open();
		const late = client.ping();
		vi.advanceTimersByTime(100);
		await expect(late).rejects.toThrow('timed out');
		const dropped = client.ping();
		FakeSocket.last.drop();
		await expect(dropped).rejects.toThrow('connection lost');
	});
});

describe('HTTP', () => {
	function fakeFetch(status: number, body: unknown) {
		return vi.fn(async (_url: string, _init?: RequestInit) => new Response(JSON.stringify(body), { status }));
	}

	it('start() posts the params to the kind as the confirmed identity and shows the task', async () => {
		const fetch = fakeFetch(202, { ...task('t1', { status: 'queued' }), clientId: 'me' });
		const { client } = makeClient({ fetch: fetch as unknown as typeof globalThis.fetch });
		client.connect();
		FakeSocket.last.open();
		const started = client.start('resize photos', { width: 640 }, { name: 'my photos' });
		FakeSocket.last.receive(greeting('me')); // start waits for the identity
		const handle = await started;
		expect(handle.id).toBe('t1');
		expect(handle.view).toMatchObject({ id: 't1', status: 'queued' });
		const [url, init] = fetch.mock.calls[0] ?? [];
		expect(url).toBe('/api/tasks/resize%20photos?name=my%20photos');
		expect(init?.method).toBe('POST');
		expect((init?.headers as Record<string, string>)['X-Client-Id']).toBe('me');
		expect(JSON.parse(String(init?.body))).toEqual({ width: 640 });
		expect(client.tasks.map((t) => t.id)).toEqual(['t1']);
		expect(client.tasks[0]).not.toHaveProperty('clientId');
	});

	it('start() names the unique key in the query', async () => {
		const fetch = fakeFetch(202, { ...task('t1', { status: 'queued' }), clientId: 'me' });
		const { client } = makeClient({ fetch: fetch as unknown as typeof globalThis.fetch });
		client.connect();
		FakeSocket.last.open();
		const started = client.start('resize', {}, { name: 'a b', key: 'photo/1' });
		FakeSocket.last.receive(greeting('me'));
		await started;
		expect(fetch.mock.calls[0]?.[0]).toBe('/api/tasks/resize?name=a%20b&key=photo%2F1');
	});

	it('cancel() posts to the task and turns errors into ProgressQHttpError', async () => {
		const fetch = fakeFetch(409, { error: { code: 'already_finished', message: 'task already finished' } });
		const { client } = makeClient({ fetch: fetch as unknown as typeof globalThis.fetch });
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		const error = await client.cancel('t/1').catch((e: unknown) => e);
		expect(error).toBeInstanceOf(ProgressQHttpError);
		expect(error).toMatchObject({ status: 409, code: 'already_finished', message: 'task already finished' });
		expect(fetch.mock.calls[0]?.[0]).toBe('/api/task/t%2F1/cancel');
	});

	it('list() merges without going backwards', async () => {
		const fetch = fakeFetch(200, [task('t1', { progress: 10 }), task('t2', { progress: 5 })]);
		const { client } = makeClient({ fetch: fetch as unknown as typeof globalThis.fetch });
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		FakeSocket.last.receive({ type: 'taskProgress', seq: 1, task: task('t1', { progress: 60 }) });
		await client.list();
		expect(Object.fromEntries(client.tasks.map((t) => [t.id, t.progress]))).toEqual({ t1: 60, t2: 5 });
	});

	it('fails when no identity arrives in time', async () => {
		const { client } = makeClient({ identityTimeoutMs: 50 });
		client.connect();
		const started = client.start('x', {});
		vi.advanceTimersByTime(50);
		await expect(started).rejects.toThrow('no identity');
	});
});

// --- the event stream (SSE) as a fallback -------------------------------------------------

describe('event stream fallback', () => {
	it('switches to the event stream after two WebSocket attempts that never opened', () => {
		const { client, statuses } = makeFallbackClient({ backoff: { initialMs: 100, jitter: 0 } });
		client.connect();
		expect(client.transport).toBe('websocket');
		FakeSocket.last.drop(1006);
		// one failure may be a server restarting: try the WebSocket again
		expect(FakeEventSource.instances).toHaveLength(0);
		vi.advanceTimersByTime(100);
		expect(FakeSocket.instances).toHaveLength(2);
		FakeSocket.last.drop(1006);

		// the second in a row: at once over the event stream, a first connection (no identity yet)
		expect(FakeEventSource.instances).toHaveLength(1);
		expect(client.transport).toBe('eventsource');
		expect(statuses.at(-1)).toMatchObject({ state: 'connecting', transport: 'eventsource' });
		expect(FakeEventSource.last.path).toBe('/api/events');
		expect(FakeEventSource.last.query).toEqual({});

		FakeEventSource.last.receive(greeting('me'));
		FakeEventSource.last.receive({ type: 'snapshot', tasks: [], seq: 0, recovered: false });
		expect(client.state).toBe('connected');
		expect(client.clientId).toBe('me');
		// and it stays there: no WebSocket attempts any more
		vi.advanceTimersByTime(100000);
		expect(FakeSocket.instances).toHaveLength(2);
	});

	it('goes straight to the event stream where there is no WebSocket', () => {
		const { client } = makeStreamOnlyClient();
		expect(client.transport).toBe('eventsource');
		client.connect();
		expect(FakeSocket.instances).toHaveLength(0);
		expect(FakeEventSource.instances).toHaveLength(1);
		expect(FakeEventSource.last.url).toBe('/api/events');
	});

	it('applies connection, snapshot and events, and keeps the identity in storage', () => {
		const storage = new MemoryStorage();
		const { client } = makeStreamOnlyClient({ storage, baseUrl: 'http://api.test' });
		const identities: unknown[] = [];
		client.on('identity', (i) => identities.push(i));
		client.connect();
		expect(FakeEventSource.last.url).toBe('http://api.test/api/events');
		const source = FakeEventSource.last;
		source.receive(greeting('me'));
		source.receive({ type: 'snapshot', tasks: [task('t0', { status: 'completed', progress: 100 })], seq: 3, recovered: false });
		source.receive({ type: 'taskQueued', seq: 4, task: task('t1', { status: 'queued', createdAt: '2026-01-02T00:00:00Z' }) });
		source.receive({ type: 'taskProgress', seq: 5, task: task('t1', { progress: 40, createdAt: '2026-01-02T00:00:00Z' }) });
		source.receive({ type: 'taskProgress', seq: 5, task: task('t1', { progress: 40, createdAt: '2026-01-02T00:00:00Z' }) });
		expect(client.state).toBe('connected');
		expect(client.lastSeq).toBe(5);
		expect(client.tasks.map((t) => [t.id, t.progress])).toEqual([
			['t1', 40],
			['t0', 100]
		]);
		expect(identities).toEqual([{ socketId: 'me', clientId: 'me', resumed: false, recovered: null, replaced: false }]);
		expect(JSON.parse(storage.getItem('progressq.identity') ?? 'null')).toMatchObject({
			clientId: 'me',
			lastSeq: 5,
			tasks: [{ id: 't1', progress: 40 }, { id: 't0' }]
		});
	});

	it('after a reload names the stored identity and lastSeq in the URL and applies what was missed', () => {
		const storage = new MemoryStorage();
		const stored = { clientId: 'kept', lastSeq: 5, tasks: [task('t1', { progress: 35 })] };
		storage.setItem('progressq.identity', JSON.stringify(stored));
		const { client } = makeStreamOnlyClient({ storage });
		const identities: unknown[] = [];
		client.on('identity', (i) => identities.push(i));
		client.connect();
		expect(FakeEventSource.last.query).toEqual({ clientId: 'kept', lastEventId: '5' });
		FakeEventSource.last.receive({ ...greeting('s9'), clientId: 'kept', recovered: true });
		FakeEventSource.last.receive({ type: 'taskProgress', seq: 6, task: task('t1', { progress: 60 }) });
		expect(client.clientId).toBe('kept');
		expect(client.socketId).toBe('s9');
		expect(client.tasks[0]?.progress).toBe(60);
		expect(identities).toEqual([{ socketId: 's9', clientId: 'kept', resumed: true, recovered: true, replaced: false }]);
		expect(JSON.parse(storage.getItem('progressq.identity') ?? 'null')).toMatchObject({ clientId: 'kept', lastSeq: 6 });
	});

	it('with streamCookie names the identity by a cookie, not in the URL', async () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'kept', lastSeq: 5, tasks: [] }));
		const fetch = vi.fn(async (_url: string, _init?: RequestInit) => ({
			ok: true,
			status: 200,
			json: async () => ({ clientId: 'kept', stream: 'abc123' })
		}));
		const { client } = makeStreamOnlyClient({
			storage,
			streamCookie: true,
			fetch: fetch as unknown as typeof globalThis.fetch
		});
		client.connect();
		client.connect(); // while the cookie is asked for: nothing more is opened
		await vi.advanceTimersByTimeAsync(0);
		expect(fetch).toHaveBeenCalledOnce();
		const [url, init] = fetch.mock.calls[0] ?? [];
		expect(url).toBe('/api/events');
		expect(init?.method).toBe('POST');
		expect((init?.headers as Record<string, string>)['X-Client-Id']).toBe('kept');
		expect(FakeEventSource.instances).toHaveLength(1);
		expect(FakeEventSource.last.query).toEqual({ stream: 'abc123', lastEventId: '5' });
		expect(FakeEventSource.last.url).not.toContain('kept');
		FakeEventSource.last.receive({ ...greeting('s9'), clientId: 'kept', recovered: true });
		expect(client.clientId).toBe('kept');
	});

	it('with streamCookie, an id the server refuses is named as before (and refused), a failure retries', async () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'kept', lastSeq: 5, tasks: [] }));
		let status = 503;
		const fetch = vi.fn(async () => ({ ok: status < 300, status, json: async () => ({}) }));
		const { client } = makeStreamOnlyClient({
			storage,
			streamCookie: true,
			backoff: { initialMs: 100, jitter: 0 },
			fetch: fetch as unknown as typeof globalThis.fetch
		});
		client.connect();
		await vi.advanceTimersByTimeAsync(0);
		expect(FakeEventSource.instances).toHaveLength(0); // unavailable: no stream naming the id
		expect(client.state).toBe('reconnecting');
		status = 403;
		await vi.advanceTimersByTimeAsync(1000);
		expect(FakeEventSource.instances).toHaveLength(1);
		expect(FakeEventSource.last.query).toEqual({ clientId: 'kept', lastEventId: '5' });
	});

	it('with streamCookie, a first connection (no identity yet) asks for no cookie', () => {
		const fetch = vi.fn();
		const { client } = makeStreamOnlyClient({ streamCookie: true, fetch: fetch as unknown as typeof globalThis.fetch });
		client.connect();
		expect(fetch).not.toHaveBeenCalled();
		expect(FakeEventSource.last.url).toBe('/api/events');
	});

	it('without a complete task list asks for the identity only, and takes the snapshot', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'kept', lastSeq: 5 }));
		const { client } = makeStreamOnlyClient({ storage });
		const identities: unknown[] = [];
		client.on('identity', (i) => identities.push(i));
		client.connect();
		expect(FakeEventSource.last.query).toEqual({ clientId: 'kept' });
		FakeEventSource.last.receive({ ...greeting('s9'), clientId: 'kept' });
		FakeEventSource.last.receive({ type: 'snapshot', tasks: [task('t1', { progress: 50 })], seq: 9, recovered: false });
		expect(identities.at(-1)).toMatchObject({ clientId: 'kept', resumed: true });
		expect(client.synced).toBe(true);
		expect(client.lastSeq).toBe(9);
		expect(client.tasks.map((t) => t.id)).toEqual(['t1']);
	});

	it('reopens the stream with the latest seq when the browser gives up on it', () => {
		const { client, states } = makeStreamOnlyClient({ backoff: { initialMs: 100, jitter: 0 } });
		client.connect();
		const first = FakeEventSource.last;
		first.receive(greeting('me'));
		first.receive({ type: 'snapshot', tasks: [], seq: 0, recovered: false });
		first.receive({ type: 'taskQueued', seq: 1, task: task('t1', { status: 'queued' }) });
		first.receive({ type: 'taskProgress', seq: 2, task: task('t1', { progress: 30 }) });

		first.giveUp();
		expect(client.state).toBe('reconnecting');
		expect(states.at(-1)).toBe('reconnecting');
		vi.advanceTimersByTime(99);
		expect(FakeEventSource.instances).toHaveLength(1);
		vi.advanceTimersByTime(1);
		expect(FakeEventSource.instances).toHaveLength(2);
		const second = FakeEventSource.last;
		expect(second.query).toEqual({ clientId: 'me', lastEventId: '2' });

		// a late message of the old stream is not applied
		first.receive({ type: 'taskProgress', seq: 3, task: task('t1', { progress: 99 }) });
		expect(client.tasks[0]?.progress).toBe(30);

		second.receive({ ...greeting('s2'), clientId: 'me', recovered: true });
		second.receive({ type: 'taskProgress', seq: 3, task: task('t1', { progress: 70 }) });
		expect(client.state).toBe('connected');
		expect(client.lastSeq).toBe(3);
		expect(client.tasks[0]?.progress).toBe(70);

		// given up again later: the URL carries the seq as of then
		second.giveUp();
		vi.advanceTimersByTime(100);
		expect(FakeEventSource.last.query).toEqual({ clientId: 'me', lastEventId: '3' });
	});

	it('lets the browser reconnect by itself when the URL names the identity', () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'kept', lastSeq: 2, tasks: [] }));
		const { client } = makeStreamOnlyClient({ storage });
		client.connect();
		FakeEventSource.last.receive({ ...greeting('s1'), clientId: 'kept', recovered: true });
		FakeEventSource.last.lose();
		expect(client.state).toBe('reconnecting');
		vi.advanceTimersByTime(100000);
		expect(FakeEventSource.instances).toHaveLength(1);
		expect(FakeEventSource.last.closed).toBe(false);
		// the browser's own reconnection (with Last-Event-ID) is answered on the same object
		FakeEventSource.last.receive({ ...greeting('s2'), clientId: 'kept', recovered: true });
		expect(client.state).toBe('connected');
		expect(client.socketId).toBe('s2');
	});

	it('reopens itself, naming the identity, when the lost stream is the one that minted it', () => {
		const { client } = makeStreamOnlyClient({ backoff: { initialMs: 100, jitter: 0 } });
		client.connect();
		const first = FakeEventSource.last;
		first.receive(greeting('new-id'));
		first.receive({ type: 'snapshot', tasks: [], seq: 4, recovered: false });
		first.lose(); // the browser would reconnect without clientId and be given another identity
		expect(first.closed).toBe(true);
		vi.advanceTimersByTime(100);
		expect(FakeEventSource.instances).toHaveLength(2);
		expect(FakeEventSource.last.query).toEqual({ clientId: 'new-id', lastEventId: '4' });
		expect(client.clientId).toBe('new-id');
	});

	it('takes a new identity when the server refuses the stored one (403)', async () => {
		const storage = new MemoryStorage();
		storage.setItem('progressq.identity', JSON.stringify({ clientId: 'forged', lastSeq: 5, tasks: [] }));
		const fetch = vi.fn(async (_url: string, _init?: RequestInit) => new Response('{}', { status: 403 }));
		const { client } = makeStreamOnlyClient({
			storage,
			fetch: fetch as unknown as typeof globalThis.fetch,
			backoff: { initialMs: 5000, jitter: 0 }
		});
		const identities: unknown[] = [];
		client.on('identity', (i) => identities.push(i));
		client.connect();
		expect(FakeEventSource.last.query).toMatchObject({ clientId: 'forged' });
		FakeEventSource.last.giveUp();
		await vi.waitFor(() => expect(FakeEventSource.instances).toHaveLength(2));
		const [url, init] = fetch.mock.calls[0] ?? [];
		expect(url).toBe('/api/tasks');
		expect((init?.headers as Record<string, string>)['X-Client-Id']).toBe('forged');
		expect(FakeEventSource.last.query).toEqual({});
		FakeEventSource.last.receive(greeting('fresh'));
		expect(client.clientId).toBe('fresh');
		expect(identities.at(-1)).toMatchObject({ clientId: 'fresh', resumed: false, replaced: true });
	});

	it('a WebSocket that opened once does not fall back when it drops later', () => {
		const { client } = makeFallbackClient({ backoff: { initialMs: 100, maxMs: 100, jitter: 0 } });
		client.connect();
		FakeSocket.last.open();
		FakeSocket.last.receive(greeting('me'));
		FakeSocket.last.drop(1006);
		for (let attempt = 0; attempt < 5; attempt++) {
			vi.advanceTimersByTime(100);
			FakeSocket.last.drop(1006); // the server is down: attempts fail before opening
		}
		expect(FakeSocket.instances).toHaveLength(6);
		expect(FakeEventSource.instances).toHaveLength(0);
		expect(client.transport).toBe('websocket');
		expect(client.state).toBe('reconnecting');
	});

	it('fallbackAfter: 0 keeps to the WebSocket', () => {
		const { client } = makeFallbackClient({ fallbackAfter: 0, backoff: { initialMs: 100, maxMs: 100, jitter: 0 } });
		client.connect();
		for (let attempt = 0; attempt < 4; attempt++) {
			FakeSocket.last.drop(1006);
			vi.advanceTimersByTime(100);
		}
		expect(FakeEventSource.instances).toHaveLength(0);
		expect(client.transport).toBe('websocket');
	});

	it('start and cancel go over HTTP with X-Client-Id; ping times GET /health', async () => {
		let clock = 1000;
		const fetch = vi.fn(async (url: string, _init?: RequestInit) => {
			if (url === '/health') {
				clock += 17;
				return new Response(JSON.stringify({ status: 'healthy' }));
			}
			if (url === '/api/tasks/hello') {
				return new Response(JSON.stringify({ ...task('t1', { status: 'queued' }), clientId: 'me' }), { status: 202 });
			}
			return new Response(JSON.stringify(task('t1', { status: 'cancelled' })));
		});
		const { client } = makeStreamOnlyClient({ fetch: fetch as unknown as typeof globalThis.fetch, now: () => clock });
		await expect(client.ping()).rejects.toThrow('not connected');
		client.connect();
		const started = client.start('hello', { size: 5 });
		FakeEventSource.last.receive(greeting('me')); // start waits for the identity
		await expect(started).resolves.toMatchObject({ id: 't1' });
		await client.cancel('t1');
		await expect(client.ping()).resolves.toBe(17);
		const calls = fetch.mock.calls.map(([url, init]) => [url, (init?.headers as Record<string, string>)['X-Client-Id']]);
		expect(calls).toEqual([
			['/api/tasks/hello', 'me'],
			['/api/task/t1/cancel', 'me'],
			['/health', undefined]
		]);
		expect(client.tasks[0]?.status).toBe('cancelled');
	});

	it('a server error message on the stream is a warning, not a lost connection', () => {
		const { client } = makeStreamOnlyClient();
		const warnings: string[] = [];
		client.on('warning', (w) => warnings.push(w));
		client.connect();
		FakeEventSource.last.receive(greeting('me'));
		FakeEventSource.last.receive({ type: 'error', code: 'invalid_message', message: 'nope' });
		expect(client.state).toBe('connected');
		expect(warnings).toEqual(['server: invalid_message: nope']);
		expect(FakeEventSource.instances).toHaveLength(1);
	});

	it('close() closes the stream for good', () => {
		const { client } = makeStreamOnlyClient();
		client.connect();
		FakeEventSource.last.receive(greeting('me'));
		client.close();
		expect(FakeEventSource.last.closed).toBe(true);
		expect(client.state).toBe('disconnected');
		vi.advanceTimersByTime(100000);
		expect(FakeEventSource.instances).toHaveLength(1);
	});
});
