// HPC job resume on a real single-node Slurm (munged + slurmctld + slurmd, started by
// scripts/services/slurm.sh): examples/slurm/crinc-job.sbatch runs the counter under
// `crinc run`; the job is requeued by `scontrol requeue` (SIGTERM to the batch step)
// and, separately, by the time-limit warning (`--signal=B:USR1@50` with `--time=1`);
// its next run resumes from the final checkpoint, the counter goes on and the job
// finishes with the right result.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, COUNTER, expectOneHistory, lastTick, ROOT, Sandbox, waitFor } from './helpers.js';

const SLURM_SCRIPT = join(ROOT, 'scripts', 'services', 'slurm.sh');
const SBATCH_SCRIPT = join(ROOT, 'examples', 'slurm', 'crinc-job.sbatch');
const SLURM_DIR = process.env.CRINC_SLURM_DIR ?? '/run/crinc-slurm';
const SLURM_ENV = { ...process.env, CRINC_SLURM_DIR: SLURM_DIR, SLURM_CONF: join(SLURM_DIR, 'slurm.conf') };
/** A requeued job waits for its old credential to expire (5 s here) and the next scheduling pass. */
const REQUEUE_PAUSE_MIN_MS = 3000;
/** Whole Slurm jobs, requeues included, on a loaded 2-core machine. */
const JOB_TIMEOUT_MS = 240_000;

function slurm(cmd: string, args: string[], env: NodeJS.ProcessEnv = SLURM_ENV): string {
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** The fields of `scontrol show job -o ID` (Key=Value pairs). */
function jobFields(id: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const m of slurm('scontrol', ['show', 'job', '-o', id]).matchAll(/(\w+)=(\S*)/g)) fields[m[1]!] ??= m[2]!;
  return fields;
}

describe('crinc on a real Slurm: requeued jobs resume from their checkpoint', () => {
  let startedSlurm = false;
  const submitted: string[] = [];

  beforeAll(() => {
    startedSlurm = spawnSync('bash', [SLURM_SCRIPT, 'status'], { env: SLURM_ENV }).status !== 0;
    slurm('bash', [SLURM_SCRIPT, 'start']);
  });

  afterAll(() => {
    for (const id of submitted) spawnSync('scancel', [id], { env: SLURM_ENV });
    if (startedSlurm) slurm('bash', [SLURM_SCRIPT, 'stop']);
  });

  /** sbatch of the example script running the counter to `total` ticks under crinc. */
  function submit(sb: Sandbox, job: string, total: number, sbatchOptions: string[], interval: string): string {
    const env = {
      ...SLURM_ENV,
      CRINC: `${process.execPath} ${CLI}`,
      CRINC_STORE: sb.store,
      CRINC_JOB: job,
      CRINC_INTERVAL: interval,
    };
    const args = ['--parsable', '-D', sb.dir, '-o', join(sb.dir, 'slurm-%j.out'), ...sbatchOptions, SBATCH_SCRIPT, COUNTER, '--region-mib', '4', '--tick-ms', '100', '--ticks', String(total)];
    const id = slurm('sbatch', args, env).trim().split(';')[0]!;
    submitted.push(id);
    return id;
  }

  async function completion(id: string): Promise<Record<string, string>> {
    return waitFor(
      () => {
        const f = jobFields(id);
        if (['FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE'].includes(f.JobState!)) {
          throw new Error(`Slurm job ${id} ended ${f.JobState} (exit ${f.ExitCode})`);
        }
        return f.JobState === 'COMPLETED' ? f : undefined;
      },
      `Slurm job ${id} to complete`,
      JOB_TIMEOUT_MS,
    );
  }

  it.concurrent('scontrol requeue (SIGTERM): final checkpoint, requeue, the next run resumes and finishes', async () => {
    const sb = new Sandbox();
    try {
      const total = 200;
      const id = submit(sb, 'requeued', total, [], '3s');
      await waitFor(() => { try { return lastTick(sb.jobLog('requeued')) >= 30; } catch { return false; } }, 'the job to tick 30 times', JOB_TIMEOUT_MS);
      const requeuedAt = Date.now();
      slurm('scontrol', ['requeue', id]);
      const f = await completion(id);
      expect(f.ExitCode).toBe('0:0');
      expect(Number(f.Restarts)).toBeGreaterThanOrEqual(1);

      const out = readFileSync(join(sb.dir, `slurm-${id}.out`), 'utf8');
      const stopped = /checkpointed and stopped: job requeued saved as checkpoint (\d+)/.exec(out);
      expect(stopped, out).not.toBeNull();
      expect(out).toContain(`resumed job requeued from checkpoint ${stopped![1]}`);
      expect(out).toContain('crinc run exited with code 0');
      const final = sb.json<{ id: number; takenAt: string }[]>(['list', 'requeued']).find((c) => c.id === Number(stopped![1]))!;
      expect(Date.parse(final.takenAt)).toBeGreaterThanOrEqual(requeuedAt);

      const pause = expectOneHistory(sb.jobLog('requeued'), total);
      expect(pause.ms).toBeGreaterThanOrEqual(REQUEUE_PAUSE_MIN_MS);
      expect(pause.after).toBeGreaterThanOrEqual(30);
    } finally {
      sb.cleanup();
    }
  });

  it.concurrent('--signal=B:USR1@50 before the time limit: final checkpoint, the script requeues, the next run resumes', async () => {
    const sb = new Sandbox();
    try {
      // 600 ticks of 100 ms outlast the first warning (Slurm sends it 10–40 s into a 1-minute job).
      const total = 600;
      const id = submit(sb, 'warned', total, ['--time=1', '--signal=B:USR1@50'], '1h');
      const f = await completion(id);
      expect(f.ExitCode).toBe('0:0');
      expect(Number(f.Restarts)).toBeGreaterThanOrEqual(1);

      const out = readFileSync(join(sb.dir, `slurm-${id}.out`), 'utf8');
      // The warning, not the limit, stopped it: crinc checkpointed and the script requeued.
      expect(out).not.toContain('DUE TO TIME LIMIT');
      const stopped = /checkpointed and stopped: job warned saved as checkpoint (\d+)/.exec(out);
      expect(stopped, out).not.toBeNull();
      expect(out).toContain(`checkpointed; requeueing Slurm job ${id}`);
      expect(out).toContain(`resumed job warned from checkpoint ${stopped![1]}`);
      expect(out).toContain('crinc run exited with code 0');

      const pause = expectOneHistory(sb.jobLog('warned'), total);
      expect(pause.ms).toBeGreaterThanOrEqual(REQUEUE_PAUSE_MIN_MS);
      expect(pause.after).toBeGreaterThanOrEqual(10);
    } finally {
      sb.cleanup();
    }
  });
});
