// The page is rendered to HTML at build time, then hydrated in the browser.
export const prerender = true;
export const ssr = true;
export const trailingSlash = 'never';
