import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { compressAssets } from './compress.js';

// The server serves frontend/dist at `/`; relative asset paths keep it working behind a
// path prefix too. `npm run dev` proxies the API and the WebSocket to a running
// `trainboard serve --allow-origin http://localhost:5173` (TRAINBOARD_URL, default
// http://127.0.0.1:8000); see docs/frontend.md.
const target = process.env.TRAINBOARD_URL || 'http://127.0.0.1:8000';

export default defineConfig({
  base: './',
  plugins: [svelte(), compressAssets()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    reportCompressedSize: true,
    chunkSizeWarningLimit: 400,
    // The Svelte compiler dominates a build this small; no need to say so every time.
    rolldownOptions: { checks: { bundlerTimings: false } },
  },
  server: {
    proxy: {
      '/api': { target, changeOrigin: true },
      '/ws': { target, ws: true, changeOrigin: true },
    },
  },
  test: {
    include: ['src/**/*.test.js'],
    environment: 'node',
  },
});
