// The few libc calls Node does not expose, through koffi.
import koffi from 'koffi';
import { constants as osConstants } from 'node:os';

const libc = koffi.load('libc.so.6');
const flockFn = libc.func('int flock(int fd, int operation)');
const prctlFn = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
const errnoLocation = libc.func('int *__errno_location(void)');

const LOCK_SH = 1;
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
 * Waits for a flock on fd, shared or exclusive, on a koffi worker thread: the event loop
 * goes on while another process holds the lock.
 */
export function lockAsync(fd: number, mode: 'shared' | 'exclusive'): Promise<void> {
  return new Promise((resolve, reject) => {
    flockFn.async(fd, mode === 'shared' ? LOCK_SH : LOCK_EX, (err: unknown, result: number) => {
      if (err) reject(err as Error);
      else if (result !== 0) reject(new SyscallError(`flock(${mode})`, -1));
      else resolve();
    });
  });
}

/**
 * Makes this process the reaper of orphaned descendants: a job that `criu restore -d`
 * leaves behind becomes our child, so we can watch and reap it.
 */
export function becomeChildSubreaper(): void {
  if (prctlFn(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) !== 0) throw new SyscallError('prctl(PR_SET_CHILD_SUBREAPER)', errno());
}

// ---------------------------------------------------------------------------------
// Appended for write-protection tracking (src/tracking/): ioctl, ptrace, waitpid and
// the raw syscalls Node does not wrap. Each returns the kernel's answer unchanged
// (-1 with errno through lastErrno(), or a value); callers decide what is an error.
// errno is read with koffi.errno(), which koffi saves right after each native call, so
// no allocation between the call and the read can overwrite it.

const ioctlFn = libc.func('int ioctl(int fd, unsigned long request, ...)');
const ptraceFn = libc.func('long ptrace(int request, ...)');
const waitpidFn = libc.func('int waitpid(int pid, void *status, int options)');
const syscallFn = libc.func('long syscall(long number, ...)');

/** errno of the latest call made through this module. */
export function lastErrno(): number {
  return koffi.errno();
}

/** ioctl(fd, request, arg) with arg pointing at buf's memory (the kernel may write into it). */
export function ioctlBuffer(fd: number, request: number, buf: Buffer): number {
  return ioctlFn(fd, request, 'void *', buf) as number;
}

/** ptrace(request, pid, addr, data); addr and data are plain integers or buffers. */
export function ptraceRaw(request: number, pid: number, addr: number | Buffer, data: number | Buffer): number {
  return Number(
    ptraceFn(
      request,
      'int',
      pid,
      typeof addr === 'number' ? 'uintptr_t' : 'void *',
      addr,
      typeof data === 'number' ? 'uintptr_t' : 'void *',
      data,
    ),
  );
}

/** waitpid's option: return at once (0) when no child has changed state. */
export const WNOHANG = 1;

/** How a process ended, from a waitpid status: its exit code, or the signal that killed it. */
export interface WaitExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export function decodeWaitStatus(status: number): WaitExit {
  const termSignal = status & 0x7f;
  if (termSignal === 0) return { code: (status >> 8) & 0xff, signal: null };
  const name = Object.entries(osConstants.signals).find(([, n]) => n === termSignal)?.[0] as NodeJS.Signals | undefined;
  return { code: null, signal: name ?? null };
}

/** waitpid(pid, &status, options): returns [pid or 0 or -1, status]. */
export function waitpidRaw(pid: number, options: number): [number, number] {
  const status = Buffer.alloc(4);
  const r = waitpidFn(pid, status, options) as number;
  return [r, status.readInt32LE(0)];
}

/** A raw syscall with up to six integer arguments (x86-64 numbers, see the callers). */
export function syscallRaw(nr: number, ...args: number[]): number {
  const typed: unknown[] = [];
  for (const a of args) typed.push('long', a);
  return Number(syscallFn(nr, ...typed));
}

/** process_vm_writev(pid, local iov, 1, remote iov, 1, 0) of one buffer to one remote address. */
export function processVmWrite(pid: number, remoteAddress: number, data: Buffer): number {
  const local = Buffer.alloc(16);
  local.writeBigUInt64LE(koffi.address(data), 0);
  local.writeBigUInt64LE(BigInt(data.length), 8);
  const remote = Buffer.alloc(16);
  remote.writeBigUInt64LE(BigInt(remoteAddress), 0);
  remote.writeBigUInt64LE(BigInt(data.length), 8);
  const SYS_process_vm_writev = 311;
  return Number(syscallFn(SYS_process_vm_writev, 'long', pid, 'void *', local, 'long', 1, 'void *', remote, 'long', 1, 'long', 0));
}

/** The address of a Buffer's memory, for kernel structures that carry user pointers. */
export function bufferAddress(buf: Buffer): bigint {
  return koffi.address(buf);
}

// ---------------------------------------------------------------------------------
// Sockets for CRIU's page-server stream (src/criu/page-server.ts): a connected pair,
// so that no listening endpoint exists, and a receive timeout.

const socketpairFn = libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)');
const setsockoptFn = libc.func('int setsockopt(int fd, int level, int name, void *value, uint32_t length)');

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;

/** A connected AF_UNIX stream pair, close-on-exec on both ends (a child gets one by dup2). */
export function streamSocketPair(): [number, number] {
  const fds = new Int32Array(2);
  if ((socketpairFn(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) as number) !== 0) throw new SyscallError('socketpair', koffi.errno());
  return [fds[0]!, fds[1]!];
}

const SO_SNDBUFFORCE = 32;

/**
 * Sets the bytes a socket may hold in flight from its sender (SO_SNDBUFFORCE, root: past
 * net.core.wmem_max). On AF_UNIX stream sockets the sender's buffer is the only one.
 */
export function setSendBuffer(fd: number, bytes: number): void {
  const value = Buffer.alloc(4);
  value.writeInt32LE(bytes, 0);
  if ((setsockoptFn(fd, SOL_SOCKET, SO_SNDBUFFORCE, value, value.length) as number) !== 0) throw new SyscallError('setsockopt(SO_SNDBUFFORCE)', koffi.errno());
}

/** A blocking read on fd fails with EAGAIN after ms without data (SO_RCVTIMEO). */
export function setReceiveTimeout(fd: number, ms: number): void {
  const tv = Buffer.alloc(16);
  tv.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
  tv.writeBigInt64LE(BigInt((ms % 1000) * 1000), 8);
  if ((setsockoptFn(fd, SOL_SOCKET, SO_RCVTIMEO, tv, tv.length) as number) !== 0) throw new SyscallError('setsockopt(SO_RCVTIMEO)', koffi.errno());
}

// ---------------------------------------------------------------------------------
// Passing over bytes of a socket without copying them to user space (clean pages of a
// page stream): splice(2) from the socket into a pipe, and from the pipe into /dev/null.

const pipe2Fn = libc.func('int pipe2(_Out_ int *fds, int flags)');
const fcntlIntFn = libc.func('int fcntl(int fd, int cmd, int arg)');
const spliceFn = libc.func('long splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)');

const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
/** Move pages rather than copy them where the kernel can (a hint). */
export const SPLICE_F_MOVE = 1;

/** A pipe [read end, write end], close-on-exec. */
export function pipePair(): [number, number] {
  const fds = new Int32Array(2);
  if ((pipe2Fn(fds, O_CLOEXEC) as number) !== 0) throw new SyscallError('pipe2', koffi.errno());
  return [fds[0]!, fds[1]!];
}

/** Sets a pipe's capacity (F_SETPIPE_SZ); returns the capacity the kernel gave it. */
export function setPipeCapacity(fd: number, bytes: number): number {
  const got = fcntlIntFn(fd, F_SETPIPE_SZ, bytes) as number;
  if (got < 0) throw new SyscallError('fcntl(F_SETPIPE_SZ)', koffi.errno());
  return got;
}

/** splice(fdIn, NULL, fdOut, NULL, bytes, flags): the bytes moved, 0 at end of input, or -1 (errno in lastErrno()). */
export function spliceRaw(fdIn: number, fdOut: number, bytes: number, flags: number): number {
  return Number(spliceFn(fdIn, null, fdOut, null, bytes, flags));
}

const FIONREAD = 0x541b;

/** Bytes waiting to be read in a pipe or FIFO (FIONREAD). */
export function unreadBytes(fd: number): number {
  const count = Buffer.alloc(4);
  if (ioctlBuffer(fd, FIONREAD, count) !== 0) throw new SyscallError('ioctl(FIONREAD)', koffi.errno());
  return count.readInt32LE(0);
}

const mkfifoFn = libc.func('int mkfifo(const char *path, uint32_t mode)');

/** Creates a FIFO (mkfifo(3)), without running a program: a fork of a large Node process costs tens of ms. */
export function makeFifo(path: string, mode: number): void {
  if ((mkfifoFn(path, mode) as number) !== 0) throw new SyscallError(`mkfifo ${path}`, koffi.errno());
}
