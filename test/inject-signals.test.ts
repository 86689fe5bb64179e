// Syscall injection (the arming of write protection) must not change how the job sees
// its signals: a signal sent while we hold the thread is delivered once we let go — a
// sigsuspend() it interrupts ends — and the signal mask stays as it was.
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Sys } from '../src/tracking/uffd-abi.js';
import { injectSyscalls } from '../src/tracking/uffd-inject.js';
import { killAndWait, ROOT, waitFor } from './helpers.js';

const SCENARIO = join(ROOT, 'build', 'workloads', 'scenario');
const EBADF = 9;

function sigBlk(pid: number): string {
  return /^SigBlk:\s*(\S+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
}

function state(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat[stat.lastIndexOf(')') + 2]!;
}

describe('signals during syscall injection', () => {
  const dir = mkdtempSync('/tmp/crinc-inject-');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('wake a process sleeping in sigsuspend, and leave its signal mask as it was', async () => {
    const log = join(dir, 'out.log');
    const out = openSync(log, 'w');
    const child = spawn(SCENARIO, ['writer'], { stdio: ['ignore', out, out], detached: true });
    closeSync(out);
    const pid = child.pid!;
    try {
      await waitFor(() => readFileSync(log, 'utf8').includes('ready'), 'the workload');
      await waitFor(() => state(pid) === 'S', 'the workload to sleep in sigsuspend');
      const maskBefore = sigBlk(pid);
      const result = injectSyscalls(pid, (session) => {
        // Sent while we hold the thread: it must be held back, then delivered.
        process.kill(pid, 'SIGUSR1');
        return session.syscall(Sys.close, -1);
      });
      expect(result).toBe(-EBADF);
      // The handler ran and sigsuspend ended: the workload answered with its hash.
      await waitFor(() => /^hash [0-9a-f]+ step 0$/m.test(readFileSync(log, 'utf8')), 'the woken workload to answer', 5000);
      await waitFor(() => state(pid) === 'S', 'the workload to sleep again');
      expect(sigBlk(pid)).toBe(maskBefore);
      // And it still works as before: a step.
      process.kill(pid, 'SIGUSR2');
      await waitFor(() => /^step 1$/m.test(readFileSync(log, 'utf8')), 'a step after the injection', 5000);
    } finally {
      await killAndWait(pid);
    }
  });
});
