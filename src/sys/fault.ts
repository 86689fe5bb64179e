// Fault injection for the crash-safety tests: CRINC_FAULT=<point> makes this process
// SIGKILL itself when it reaches the named point, as a power cut or an OOM kill would
// stop it there. Unset (always, outside tests), every point is a no-op.

/** The environment variable naming the point at which to die. */
export const FAULT_ENV = 'CRINC_FAULT';

/** Every named point, where it sits, so that tests can walk them all. */
export const FAULT_POINTS = {
  /** The job is frozen under CRIU (it waits for crinc's answer to its first pagemap open). */
  'checkpoint-while-frozen': 'checkpoint',
  /** CRIU has written the images; nothing of the checkpoint is stored yet. */
  'checkpoint-after-dump': 'checkpoint',
  /** Some new chunks are in a .partial pack; ingest goes on. */
  'checkpoint-mid-pack': 'checkpoint',
  /** The packs and their chunk tables are finished (fsynced, renamed); no checkpoint object names them yet. */
  'commit-packs-written': 'checkpoint',
  /** The checkpoint object is written (the commit point); the index does not list it yet. */
  'commit-object-written': 'checkpoint',
  /** Inside the commit's transaction, every row inserted, before COMMIT. */
  'commit-in-transaction': 'checkpoint',
  /** The checkpoint is committed; retention has not run. */
  'checkpoint-after-commit': 'checkpoint',
  /** `criu lazy-pages` and `criu restore` start up; both wait at their image gates (the watchdog lets them fail). */
  'restore-staging': 'restore',
  /** `criu lazy-pages` listens; the restore waits at its image gate (the watchdog lets it fail and ends the daemon). */
  'restore-daemon-ready': 'restore',
  /** CRIU has restored the job; its record still says `restoring` (the next restore adopts the process). */
  'restore-after-criu': 'restore',
  /** Inside retention's transaction, the forgotten rows deleted, before COMMIT. */
  'retention-in-transaction': 'prune',
  /** Retention's transaction committed (the ids remembered in forgotten); the checkpoint objects not yet deleted. */
  'retention-before-objects': 'prune',
  /** The sweep is committed; half of the dead pack files are deleted. */
  'gc-mid-sweep': 'gc',
  /** Repacked copies are finished; the index still points at the old packs. */
  'gc-repack-written': 'gc',
  /** S3 GC: a checkpoint object was rewritten to name the repacked copies (`:N`: the N-th). */
  'gc-mid-rewrite': 'gc',
  /** The index (S3: every checkpoint object) points at the copies; the old packs are still there. */
  'gc-before-delete': 'gc',
  /** The old packs are deleted; the store lock is still held. */
  'gc-after-delete': 'gc',
  /** The rebuilt index is complete beside the old one (index.sqlite.rebuild), not yet renamed over it. */
  'repair-before-swap': 'repair',
} as const;

export type FaultPoint = keyof typeof FAULT_POINTS;

const reached = new Map<FaultPoint, number>();

/**
 * Dies here, at once and without cleanup, when CRINC_FAULT names this point
 * (`<point>`: the first time it is reached; `<point>:N`: the N-th time).
 */
export function faultPoint(point: FaultPoint): void {
  const wanted = process.env[FAULT_ENV];
  if (!wanted?.startsWith(point)) return;
  const [name, nth] = wanted.split(':');
  if (name !== point) return;
  const count = (reached.get(point) ?? 0) + 1;
  reached.set(point, count);
  if (count === Number(nth ?? 1)) process.kill(process.pid, 'SIGKILL');
}
