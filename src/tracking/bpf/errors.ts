// Errors of the eBPF job tracker, each written for the person who reads it.
import { CrincError } from '../../errors.js';

export class TrackingError extends CrincError {
  override name = 'TrackingError';
}

/** The built BPF object is missing; it comes from `bpf/` through the set-up. */
export class TrackingObjectMissingError extends TrackingError {
  override name = 'TrackingObjectMissingError';
  constructor(readonly path: string) {
    super(`the eBPF object ${path} does not exist: build it with \`npm run build\` (make -C bpf needs clang, bpftool and libbpf-dev)`);
  }
}

/** bpf/events.h and src/tracking/bpf/events.ts disagree: events would be misread. */
export class TrackingContractError extends TrackingError {
  override name = 'TrackingContractError';
  constructor(readonly problems: string[]) {
    super(`the eBPF object does not match src/tracking/bpf/events.ts (rebuild it, or update events.ts with bpf/events.h):\n  ${problems.join('\n  ')}`);
  }
}

/** A ring buffer record that cannot be a valid event. */
export class TrackingDecodeError extends TrackingError {
  override name = 'TrackingDecodeError';
}

export class TrackingStateError extends TrackingError {
  override name = 'TrackingStateError';
}

/** The process to track does not exist (or exited while it was being seeded). */
export class ProcessGoneError extends TrackingError {
  override name = 'ProcessGoneError';
  constructor(readonly pid: number) {
    super(`process ${pid} does not exist or has exited: nothing to track`);
  }
}

/** The job has more processes than the tracked map holds. */
export class TrackingCapacityError extends TrackingError {
  override name = 'TrackingCapacityError';
}
