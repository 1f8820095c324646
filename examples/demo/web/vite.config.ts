import { sveltekit } from '@sveltejs/kit/vite';
import { fileURLToPath } from 'node:url';
import { searchForWorkspaceRoot } from 'vite';
import { defineConfig } from 'vitest/config';

// The Python demo server; override with PROGRESSQ_SERVER=http://host:port.
const server = process.env.PROGRESSQ_SERVER ?? 'http://127.0.0.1:8000';

export default defineConfig({
	plugins: [sveltekit()],
	server: {
		// @progressq/client is linked from clients/js, outside this folder.
		fs: { allow: [searchForWorkspaceRoot(process.cwd()), fileURLToPath(new URL('../../../clients/js', import.meta.url))] },
		proxy: {
			'/api': { target: server, changeOrigin: false },
			'/health': { target: server, changeOrigin: false },
			'/ws': { target: server, ws: true, changeOrigin: false }
		}
	},
	test: {
		include: ['src/**/*.test.ts'],
		environment: 'node'
	}
});
