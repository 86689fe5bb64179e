// The few libc calls Node does not expose, through koffi.
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const flockFn = libc.func('int flock(int fd, int operation)');
const prctlFn = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
const errnoLocation = libc.func('int *__errno_location(void)');

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
const PR_SET_CHILD_SUBREAPER = 36;

function errno(): number {
  return koffi.decode(errnoLocation(), 'int') as number;
}

export class SyscallError extends Error {
  override name = 'SyscallError';
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call} failed with errno ${errno}`);
  }
}

/** Takes an exclusive flock on fd without waiting; false when another holder has it. */
export function tryLockExclusive(fd: number): boolean {
  if (flockFn(fd, LOCK_EX | LOCK_NB) === 0) return true;
  const e = errno();
  if (e === EWOULDBLOCK) return false;
  throw new SyscallError('flock', e);
}

/**
 * Makes this process the reaper of orphaned descendants: a job that `criu restore -d`
 * leaves behind becomes our child, so we can watch and reap it.
 */
export function becomeChildSubreaper(): void {
  if (prctlFn(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) !== 0) throw new SyscallError('prctl(PR_SET_CHILD_SUBREAPER)', errno());
}
