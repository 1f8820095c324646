/**
 * `@progressq/client`: a framework-free browser client for progressq.
 *
 * ```ts
 * const client = new ProgressQClient({ prefix: '/pq', storage: sessionStorage });
 * client.on('tasks', (tasks) => render(tasks));
 * client.connect();
 * const task = await client.start('resize', { width: 640 }, { name: 'thumbnails' });
 * task.on((view) => showProgress(view.progress));
 * const final = await task.done;
 * ```
 */
export { backoffDelay, type BackoffOptions } from './backoff.js';
export { ProgressQClient, type StartOptions } from './client.js';
export { defaultSocketUrl } from './endpoints.js';
export { ProgressQHttpError } from './errors.js';
export { canTransition, connectionState, type ConnectionState, type Phase } from './state.js';
export { isNewerTask, isTerminal, TaskHandle } from './tasks.js';
export type * from './types.js';
export type * from './wire.js';
export { SERVER_MESSAGE_TYPES, TERMINAL_STATUSES } from './wire.js';
