import { defineConfig } from 'vitest/config';

// The tests drive real CRIU dumps and restores of real processes: they are slow and
// they share the machine's PID space and /dev/shm, so files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
