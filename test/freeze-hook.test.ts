// A controller killed while CRIU holds the job frozen in its post-dump hook (SIGKILL of
// a daemon or `crinc run` at the worst moment): the dump fails and the job runs on,
// rather than staying frozen forever waiting for an answer that will not come.
import { afterAll, describe, expect, it } from 'vitest';
import { type CheckpointJson, COUNTER, lastTick, Sandbox, waitFor } from './helpers.js';

describe('the freeze hook', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('thaws the job when the controller dies while it is frozen', async () => {
    const { controller } = await sb.run('frozen', [COUNTER, '--region-mib', '4', '--tick-ms', '50']);
    controller.kill('SIGINT'); // checkpoints from here on are standalone, in the process the fault kills
    await waitFor(() => controller.exitCode !== null, 'the controller to stop');

    const killed = sb.cli(['checkpoint', 'frozen'], { CRINC_FAULT: 'checkpoint-while-frozen' });
    expect(killed.code).toBe(-1); // died of SIGKILL, at the point
    const atKill = lastTick(sb.jobLog('frozen'));
    await waitFor(() => lastTick(sb.jobLog('frozen')) > atKill + 5, 'the job to run on after its controller died while it was frozen', 30_000);
    expect(sb.json<CheckpointJson[]>(['list', 'frozen'])).toEqual([]);
    // CRIU let go of it: the next checkpoint works.
    expect(sb.json<CheckpointJson>(['checkpoint', 'frozen']).job).toBe('frozen');
  });
});
