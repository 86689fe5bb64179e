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

/** A command that writes, on a store on a read-only file system. */
export class StoreReadOnlyError extends ControllerError {
  override name = 'StoreReadOnlyError';
  constructor(readonly path: string, command: string) {
    super(
      `the store ${path} is on a read-only file system, and crinc ${command} writes to it. ` +
        'list, jobs, status, verify, export and restore work on it as it is; to write, remount it read-write or use a writable copy (cp -a).',
    );
  }
}

/** A restore from a read-only store would overwrite job files whose current content it cannot keep. */
export class ReadOnlyRestoreError extends ControllerError {
  override name = 'ReadOnlyRestoreError';
  constructor(readonly job: string, readonly paths: string[]) {
    super(
      `restoring job "${job}" would put back ${paths.join(', ')}, whose current content differs, and a read-only store cannot keep that content first. ` +
        'Move those files away (nothing of them is lost then), or restore from a writable copy of the store.',
    );
  }
}

export class JobNotRunningError extends ControllerError {
  override name = 'JobNotRunningError';
  constructor(readonly job: string, readonly pid: number | null) {
    // Says both ways on, so that a job without checkpoints is not sent to restore and back.
    super(
      (pid === null ? `job "${job}" has no running process` : `job "${job}": its process ${pid} is not running (it exited or was killed)`) +
        `, so there is nothing to checkpoint. \`crinc restore ${job}\` brings back its newest checkpoint if it has one (crinc list ${job}); ` +
        `otherwise start it anew with \`crinc run --job ${job} -- CMD\`.`,
    );
  }
}

export class JobStillRunningError extends ControllerError {
  override name = 'JobStillRunningError';
  constructor(readonly job: string, readonly pid: number) {
    super(`job "${job}" is still running as pid ${pid}: restoring over it would run two copies. Stop it first: \`crinc stop ${job}\` (with --checkpoint to keep its latest state), then restore.`);
  }
}

export class JobExistsError extends ControllerError {
  override name = 'JobExistsError';
  constructor(readonly job: string, readonly pid: number) {
    super(`job "${job}" already runs as pid ${pid}; pick another --job name, or stop it first: \`crinc stop ${job}\``);
  }
}

export class NoCheckpointError extends ControllerError {
  override name = 'NoCheckpointError';
}

/** A restore of a job that has no checkpoint: what to do depends on whether it runs. */
export function noCheckpointYet(job: string, running: boolean): NoCheckpointError {
  return new NoCheckpointError(
    running
      ? `job "${job}" has no checkpoint yet; take one with \`crinc checkpoint ${job}\``
      : `job "${job}" has no checkpoint and is not running: there is nothing to restore. Start it anew with \`crinc run --job ${job} -- CMD\`.`,
  );
}

/** Ctrl-C on a standalone `crinc checkpoint`, before the job was thawed: no checkpoint. */
export class CheckpointCancelledError extends ControllerError {
  override name = 'CheckpointCancelledError';
  constructor(readonly job: string) {
    super(`the checkpoint of job "${job}" was cancelled; the job goes on`);
  }
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
