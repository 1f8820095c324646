import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
const config = {
	preprocess: vitePreprocess(),
	compilerOptions: {
		runes: true
	},
	kit: {
		// The page is prerendered into build/ and served by the Python demo server.
		adapter: adapter({ pages: 'build', assets: 'build', fallback: undefined, strict: true }),
		prerender: { entries: ['*'] },
		// CSS goes inline into the prerendered HTML: styled from the first paint.
		inlineStyleThreshold: 64 * 1024
	}
};

export default config;
