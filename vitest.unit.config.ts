import { defineConfig } from 'vitest/config';

// The quick loop (`npm run test:unit`): the tests of pure parts (codec, store format and
// index, page runs, time specs, progress, logs), which need neither root, CRIU, eBPF nor
// a running job: only `npm ci` and the codec's build. They touch no shared state, so
// files run in parallel. `npm test` runs them too, with everything else.
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    testTimeout: 60_000,
    reporters: ['default'],
  },
});
