// Errors of the controller, written for the person at the terminal.
import { CrincError } from '../errors.js';

export class ControllerError extends CrincError {
  override name = 'ControllerError';
}

export class NotRootError extends ControllerError {
  override name = 'NotRootError';
  constructor() {
    super('crinc must run as root: CRIU needs it to dump and restore processes, and stores are root-only. Run it with sudo.');
  }
}

/** The store path names something that is not a directory. */
export class StorePathError extends ControllerError {
  override name = 'StorePathError';
  constructor(readonly path: string) {
    super(`the store path ${path} is a file, not a directory: a crinc store is a directory. Fix --store (or CRINC_STORE), or move that file away.`);
  }
}

export class JobNotRunningError extends ControllerError {
  override name = 'JobNotRunningError';
  constructor(readonly job: string, readonly pid: number | null) {
    super(
      pid === null
        ? `job "${job}" has no running process; restore it with \`crinc restore ${job}\``
        : `job "${job}": its process ${pid} is not running (it exited or was killed); restore it with \`crinc restore ${job}\``,
    );
  }
}

export class JobStillRunningError extends ControllerError {
  override name = 'JobStillRunningError';
  constructor(readonly job: string, readonly pid: number) {
    super(`job "${job}" is still running as pid ${pid}: restoring over it would run two copies. Stop it first (kill ${pid}), then restore.`);
  }
}

export class JobExistsError extends ControllerError {
  override name = 'JobExistsError';
  constructor(readonly job: string, readonly pid: number) {
    super(`job "${job}" already runs as pid ${pid}; pick another --job name, or stop it first`);
  }
}

export class NoCheckpointError extends ControllerError {
  override name = 'NoCheckpointError';
}

export class JobStartError extends ControllerError {
  override name = 'JobStartError';
}

/** `crinc run` found checkpoints of the job but could not resume from them. */
export class ResumeError extends ControllerError {
  override name = 'ResumeError';
}

/** Asked to checkpoint and stop, the final checkpoint failed; the job was stopped anyway. */
export class FinalCheckpointError extends ControllerError {
  override name = 'FinalCheckpointError';
  constructor(
    readonly job: string,
    readonly newest: { id: number; takenAt: number } | null,
    cause: Error,
  ) {
    super(
      `job "${job}": the final checkpoint failed (${cause.message}); the job was stopped. ` +
        (newest
          ? `Running the same \`crinc run\` again resumes from checkpoint ${newest.id} (taken ${new Date(newest.takenAt).toISOString()}), losing the work since then.`
          : 'It has no checkpoint: running the same `crinc run` again starts it anew.'),
      { cause },
    );
  }
}
