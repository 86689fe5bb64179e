// The root of crinc's operating errors, and the translation of the system's own errors
// (errno codes, SQLite's) into them. An operating error is one the person at the
// terminal can act on: its message says what happened, why, and what to do, and crinc
// exits 1 without a stack. Anything else that reaches the command line is a bug.

export class CrincError extends Error {
  override name = 'CrincError';
}

/** A failed system call (an errno code), said for a person: which file, and the fix. */
export class SystemError extends CrincError {
  override name = 'SystemError';
  constructor(
    message: string,
    readonly code: string,
    cause: unknown,
  ) {
    super(message, { cause });
  }
}

/** " writing /path (open)": the file and the call, as far as the error knows them. */
function onWhat(e: NodeJS.ErrnoException): string {
  const path = e.path ?? (e as { dest?: string }).dest;
  return (path ? ` on ${path}` : '') + (e.syscall ? ` (${e.syscall})` : '');
}

/**
 * The fix for each errno an operator meets. `where` names the store, so that a
 * message can say what a failure inside it means.
 */
const ERRNO_MESSAGES: Record<string, (e: NodeJS.ErrnoException, where: string) => string> = {
  ENOSPC: (e, where) =>
    `no space left on the device${onWhat(e)}. Free space there (crinc prune, then crinc gc, frees forgotten checkpoints), ` +
    `or use a store on a larger file system${where}. What was being written was not committed: the store holds what it held before.`,
  EDQUOT: (e, where) => `the disk quota is used up${onWhat(e)}. Raise the quota or free space${where}; nothing partial was committed.`,
  EROFS: (e, where) =>
    `read-only file system${onWhat(e)}: crinc cannot write there. Remount it read-write, or point --store at a writable store${where}. ` +
    'Reading a read-only store (list, jobs, status, verify, export, restore) works.',
  EACCES: (e) =>
    `permission denied${onWhat(e)}: crinc runs as root and stores are root's (dirs 0700, files 0600); check the path's owner and mode, ` +
    'and any security module (AppArmor, SELinux) that confines crinc.',
  EPERM: (e) => `operation not permitted${onWhat(e)}: check that crinc runs as root and that the file is not immutable (lsattr).`,
  ENOENT: (e, where) => `no such file or directory${onWhat(e)}${where ? `; if it belongs to the store${where}, the store is damaged: run crinc verify` : ''}.`,
  ENOTDIR: (e) => `a part of the path is a file, not a directory${onWhat(e)}: fix the path (e.g. --store, --to), or move that file away.`,
  EEXIST: (e) => `the path already exists${onWhat(e)}: pick another path, or move what is there away first.`,
  EISDIR: (e) => `a directory is where crinc expected a file${onWhat(e)}: fix the path.`,
  EMFILE: () => 'crinc has too many files open (EMFILE): raise its open-files limit (ulimit -n) and try again.',
  EIO: (e) => `the disk reported an input/output error${onWhat(e)}: check the device (dmesg), then run crinc verify on the store.`,
};

/** SQLite's result codes for the same conditions, as better-sqlite3 reports them. */
const SQLITE_ERRNO: Record<string, string> = {
  SQLITE_FULL: 'ENOSPC',
  SQLITE_READONLY: 'EROFS',
  SQLITE_READONLY_DBMOVED: 'EROFS',
  SQLITE_READONLY_DIRECTORY: 'EROFS',
  SQLITE_PERM: 'EACCES',
  SQLITE_IOERR: 'EIO',
};

/**
 * The operating error behind e, or undefined when e is a bug. `store`: the store the
 * command works on, named in messages about files inside it.
 */
export function asOperatingError(e: unknown, store?: string): CrincError | undefined {
  if (e instanceof CrincError) return e;
  if (!(e instanceof Error)) return undefined;
  const err = e as NodeJS.ErrnoException;
  const where = store ? ` (the store is ${store})` : '';
  if (typeof err.code === 'string' && err.code.startsWith('SQLITE_')) {
    const errno = SQLITE_ERRNO[err.code] ?? SQLITE_ERRNO[err.code.replace(/_[A-Z]+$/, '')];
    if (errno === undefined) return undefined;
    const path = store ? `${store}/index.sqlite` : undefined;
    return new SystemError(`the store index: ${err.message}; ` + ERRNO_MESSAGES[errno]!({ ...err, path, syscall: undefined }, where), errno, e);
  }
  const explain = typeof err.code === 'string' ? ERRNO_MESSAGES[err.code] : undefined;
  if (!explain) return undefined;
  return new SystemError(explain(err, where), err.code!, e);
}
