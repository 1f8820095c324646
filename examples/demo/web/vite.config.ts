import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vitest/config';

// The Python demo server; override with PROGRESSQ_SERVER=http://host:port.
const server = process.env.PROGRESSQ_SERVER ?? 'http://127.0.0.1:8000';

export default defineConfig({
	plugins: [sveltekit()],
	server: {
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
