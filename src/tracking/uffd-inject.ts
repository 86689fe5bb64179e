// Runs syscalls inside another process with ptrace, without writing to its memory.
//
// One thread (the thread-group leader) is seized and interrupted. For each injected
// syscall its registers are pointed at an existing `syscall` instruction (found in the
// target's [vdso], or else in another executable mapping) with the syscall number and
// arguments loaded, and it is stepped with PTRACE_SYSCALL to the syscall's entry and exit
// stops; rax at the exit stop is the result. Nothing after the instruction ever runs: the
// thread's original registers and signal mask are put back before it is detached.
//
// While injecting, all signals of that thread are blocked (PTRACE_SETSIGMASK), so no
// handler can run on the borrowed registers; SIGSTOP/SIGKILL cannot be blocked and are
// handled (a stop is passed on at detach, a kill ends the injection with an error).
// Other threads of the process keep running; they are unaffected because no code or data
// of the process is modified.
//
// If the thread was stopped inside an interruptible syscall (rax = -ERESTART*), the saved
// registers are rewound to re-execute that syscall, as the kernel itself would have done
// on the way out of the stop (CRIU's compel does the same).
import { hasExited } from '../sys/proc.js';
import { readFileSync, openSync, readSync, closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { lastErrno, ptraceRaw, waitpidRaw, WNOHANG } from '../sys/libc.js';
import {
  KERNEL_SIGSET_BYTES,
  Ptrace,
  PTRACE_EVENT_STOP,
  PTRACE_O_TRACESYSGOOD,
  RestartErrno,
  Sys,
  SYSCALL_INSTRUCTION,
  USER_CS_64,
  USER_REGS,
  WALL,
} from './uffd-abi.js';

/** How long a seized thread may take to reach a ptrace stop before we give up. */
export const INJECTION_STOP_TIMEOUT_MS = 5000;
/** Largest executable mapping searched for a `syscall` instruction when [vdso] has none. */
const MAX_SEARCHED_MAPPING_BYTES = 64 << 20;

const { SIGTRAP, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU } = osConstants.signals;
/** Cannot all be blocked, and must not be lost. */
const STOP_SIGNALS = new Set<number>([SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU]);
/** PTRACE_O_TRACESYSGOOD marks syscall stops with this bit on SIGTRAP. */
const SYSCALL_STOP_SIGNAL = SIGTRAP | 0x80;
const { ESRCH, EPERM } = osConstants.errno;

export class SyscallInjectionError extends Error {
  override name = 'SyscallInjectionError';
  constructor(
    readonly pid: number,
    message: string,
  ) {
    super(`cannot run a syscall inside process ${pid}: ${message}`);
  }
}

/** What waitpid reported for the traced thread. */
type Stop =
  | { kind: 'syscall' }
  | { kind: 'event-stop'; signal: number }
  | { kind: 'signal'; signal: number }
  | { kind: 'gone'; description: string };

function decodeStatus(status: number): Stop {
  const low = status & 0x7f;
  if ((status & 0xff) === 0x7f) {
    const signal = (status >> 8) & 0xff;
    const event = (status >> 16) & 0xffff;
    if (signal === SYSCALL_STOP_SIGNAL) return { kind: 'syscall' };
    if (event === PTRACE_EVENT_STOP) return { kind: 'event-stop', signal };
    return { kind: 'signal', signal };
  }
  if (low === 0) return { kind: 'gone', description: `it exited with status ${(status >> 8) & 0xff}` };
  return { kind: 'gone', description: `it was killed by signal ${low}` };
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/**
 * Waits for the next ptrace stop of pid, polling with WNOHANG so a thread that never stops
 * (uninterruptible sleep) ends in an error instead of hanging the controller. Synchronous
 * on purpose: if the target is also a child of this Node process, libuv's SIGCHLD handler
 * (which calls waitpid for its children) cannot run and steal a stop before we see it.
 */
function waitForStop(pid: number): Stop {
  const deadline = Date.now() + INJECTION_STOP_TIMEOUT_MS;
  let pause = 0.02;
  for (;;) {
    const [r, status] = waitpidRaw(pid, WALL | WNOHANG);
    if (r === pid) return decodeStatus(status);
    if (r < 0) throw new SyscallInjectionError(pid, `waitpid failed with errno ${lastErrno()}`);
    if (Date.now() > deadline) {
      throw new SyscallInjectionError(pid, `its thread did not reach a ptrace stop within ${INJECTION_STOP_TIMEOUT_MS} ms (uninterruptible sleep?)`);
    }
    sleepMs(pause);
    pause = Math.min(pause * 2, 2);
  }
}

function readMappings(pid: number): Array<{ start: bigint; end: bigint; perms: string; name: string }> {
  const out = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) out.push({ start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3]!, name: m[4]! });
  }
  return out;
}

/**
 * The address of a `syscall` instruction in pid's executable memory. [vdso] comes first:
 * every x86-64 vDSO carries syscall fallbacks, and it is never written by anyone. Bytes
 * 0F 05 inside a longer instruction serve as well: execution jumps straight to them.
 */
export function findSyscallInstruction(pid: number): bigint {
  const maps = readMappings(pid).filter((m) => m.perms[0] === 'r' && m.perms[2] === 'x' && m.name !== '[vsyscall]');
  maps.sort((a, b) => (a.name === '[vdso]' ? -1 : b.name === '[vdso]' ? 1 : 0));
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const m of maps) {
      const length = Number(m.end - m.start);
      if (length > MAX_SEARCHED_MAPPING_BYTES) continue;
      const bytes = Buffer.alloc(length);
      let got: number;
      try {
        got = readSync(fd, bytes, 0, length, m.start);
      } catch {
        continue; // an unreadable mapping: try the next one
      }
      const at = bytes.subarray(0, got).indexOf(SYSCALL_INSTRUCTION);
      if (at >= 0) return m.start + BigInt(at);
    }
  } finally {
    closeSync(fd);
  }
  throw new SyscallInjectionError(pid, 'no syscall instruction found in its executable mappings');
}

/** A seized, stopped thread in which syscalls can be run; see injectSyscalls. */
export interface InjectionSession {
  /** Runs syscall nr with up to six integer arguments; returns rax (negative: -errno). */
  syscall(nr: number, ...args: number[]): number;
}

/**
 * Seizes pid's leader thread, runs body with a session that injects syscalls, restores
 * the thread and detaches, also when body throws. pid must not be traced by anyone else
 * (CRIU during a dump, a debugger): PTRACE_SEIZE then fails with EPERM.
 */
export function injectSyscalls<T>(pid: number, body: (session: InjectionSession) => T): T {
  const syscallAddress = findSyscallInstruction(pid);
  if (ptraceRaw(Ptrace.SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD) < 0) {
    const e = lastErrno();
    if (e === EPERM) throw new SyscallInjectionError(pid, 'PTRACE_SEIZE was refused (EPERM): another tracer (CRIU, a debugger) holds it, or we lack CAP_SYS_PTRACE');
    if (e === ESRCH) throw new SyscallInjectionError(pid, 'it does not exist');
    throw new SyscallInjectionError(pid, `PTRACE_SEIZE failed with errno ${e}`);
  }
  /** The thread is in a ptrace stop now: only then do GETREGS/SETREGS/DETACH work. */
  let inStop = false;
  /** A stop-type signal that arrived while we held the thread; passed on at detach. */
  let signalToForward = 0;
  const savedRegs = Buffer.alloc(USER_REGS.size);
  const savedMask = Buffer.alloc(KERNEL_SIGSET_BYTES);
  let regsSaved = false;
  let maskSaved = false;
  let ranSyscall = false;
  let result: { value: T } | undefined;
  let failure: unknown;
  try {
    if (ptraceRaw(Ptrace.INTERRUPT, pid, 0, 0) < 0) throw new SyscallInjectionError(pid, `PTRACE_INTERRUPT failed with errno ${lastErrno()}`);
    // Wait for the interrupt. A signal that was already being delivered comes first: let
    // it go on (as the thread would have done without us); the interrupt trap follows.
    for (;;) {
      const stop = waitForStop(pid);
      if (stop.kind === 'event-stop') break;
      if (stop.kind === 'gone') throw new SyscallInjectionError(pid, stop.description);
      if (stop.kind === 'signal') {
        if (ptraceRaw(Ptrace.CONT, pid, 0, stop.signal) < 0) throw new SyscallInjectionError(pid, `PTRACE_CONT failed with errno ${lastErrno()}`);
        continue;
      }
      throw new SyscallInjectionError(pid, 'unexpected syscall stop before the interrupt');
    }
    inStop = true;

    if (ptraceRaw(Ptrace.GETREGS, pid, 0, savedRegs) < 0) throw new SyscallInjectionError(pid, `PTRACE_GETREGS failed with errno ${lastErrno()}`);
    regsSaved = true;
    if (savedRegs.readBigUInt64LE(USER_REGS.cs) !== BigInt(USER_CS_64)) throw new SyscallInjectionError(pid, 'it is a 32-bit process; only x86-64 processes are supported');
    if (ptraceRaw(Ptrace.GETSIGMASK, pid, KERNEL_SIGSET_BYTES, savedMask) < 0) throw new SyscallInjectionError(pid, `PTRACE_GETSIGMASK failed with errno ${lastErrno()}`);
    maskSaved = true;
    const blockAll = Buffer.alloc(KERNEL_SIGSET_BYTES, 0xff);
    if (ptraceRaw(Ptrace.SETSIGMASK, pid, KERNEL_SIGSET_BYTES, blockAll) < 0) throw new SyscallInjectionError(pid, `PTRACE_SETSIGMASK failed with errno ${lastErrno()}`);

    const regs = Buffer.alloc(USER_REGS.size);
    /** Resumes to the next syscall stop, passing over group stops and noting stop signals. */
    const resumeToSyscallStop = (): void => {
      for (;;) {
        if (ptraceRaw(Ptrace.SYSCALL, pid, 0, 0) < 0) throw new SyscallInjectionError(pid, `PTRACE_SYSCALL failed with errno ${lastErrno()}`);
        inStop = false;
        const stop = waitForStop(pid);
        inStop = stop.kind !== 'gone';
        if (stop.kind === 'syscall') return;
        if (stop.kind === 'gone') throw new SyscallInjectionError(pid, stop.description);
        if (stop.kind === 'signal') {
          // Only unblockable or synchronous signals get here. A stop signal is kept for
          // detach; a fault on our borrowed registers would be a bug worth stopping for.
          if (STOP_SIGNALS.has(stop.signal)) {
            signalToForward = stop.signal;
            continue;
          }
          throw new SyscallInjectionError(pid, `signal ${stop.signal} arrived while a syscall was being injected`);
        }
        // event-stop: a group stop of the process while we hold the thread; it re-enters
        // the stop after detach (the kernel keeps the group's stopped state).
      }
    };

    const session: InjectionSession = {
      syscall(nr: number, ...args: number[]): number {
        if (args.length > 6) throw new Error('a syscall takes at most six arguments');
        savedRegs.copy(regs);
        const argOffsets = [USER_REGS.rdi, USER_REGS.rsi, USER_REGS.rdx, USER_REGS.r10, USER_REGS.r8, USER_REGS.r9];
        args.forEach((a, i) => {
          regs.writeBigInt64LE(BigInt(a), argOffsets[i]!);
        });
        regs.writeBigInt64LE(BigInt(nr), USER_REGS.rax);
        // orig_rax = -1: no syscall restart logic may act on these registers on resume.
        regs.writeBigInt64LE(-1n, USER_REGS.origRax);
        regs.writeBigUInt64LE(syscallAddress, USER_REGS.rip);
        if (ptraceRaw(Ptrace.SETREGS, pid, 0, regs) < 0) throw new SyscallInjectionError(pid, `PTRACE_SETREGS failed with errno ${lastErrno()}`);
        ranSyscall = true;
        resumeToSyscallStop(); // entry
        if (ptraceRaw(Ptrace.GETREGS, pid, 0, regs) < 0) throw new SyscallInjectionError(pid, `PTRACE_GETREGS failed with errno ${lastErrno()}`);
        if (regs.readBigInt64LE(USER_REGS.origRax) !== BigInt(nr)) {
          throw new SyscallInjectionError(pid, `stopped at syscall ${regs.readBigInt64LE(USER_REGS.origRax)} instead of the injected ${nr}`);
        }
        resumeToSyscallStop(); // exit
        if (ptraceRaw(Ptrace.GETREGS, pid, 0, regs) < 0) throw new SyscallInjectionError(pid, `PTRACE_GETREGS failed with errno ${lastErrno()}`);
        if (regs.readBigUInt64LE(USER_REGS.rip) !== syscallAddress + BigInt(SYSCALL_INSTRUCTION.length)) {
          throw new SyscallInjectionError(pid, 'the thread is not right after the injected syscall instruction');
        }
        return Number(regs.readBigInt64LE(USER_REGS.rax));
      },
    };
    result = { value: body(session) };
  } catch (e) {
    failure = e;
  }
  const restoreProblems = restoreAndDetach();
  if (restoreProblems.length) {
    // The thread may now run with altered registers: this outranks the body's own error,
    // which is kept in the message.
    const also = failure instanceof Error ? ` (after: ${failure.message})` : '';
    throw new SyscallInjectionError(pid, `restoring the thread failed: ${restoreProblems.join('; ')}${also}`);
  }
  if (failure !== undefined || result === undefined) throw failure;
  return result.value;

  function restoreAndDetach(): string[] {
    const restoredRegs = Buffer.from(savedRegs);
    if (ranSyscall) rewindInterruptedSyscall(restoredRegs);
    const restore = (): string[] => {
      const problems: string[] = [];
      if (regsSaved && ptraceRaw(Ptrace.SETREGS, pid, 0, restoredRegs) < 0) problems.push(`PTRACE_SETREGS (restore) failed with errno ${lastErrno()}`);
      if (maskSaved && ptraceRaw(Ptrace.SETSIGMASK, pid, KERNEL_SIGSET_BYTES, savedMask) < 0) {
        problems.push(`PTRACE_SETSIGMASK (restore) failed with errno ${lastErrno()}`);
      }
      if (ptraceRaw(Ptrace.DETACH, pid, 0, signalToForward) < 0 && lastErrno() !== ESRCH) problems.push(`PTRACE_DETACH failed with errno ${lastErrno()}`);
      return problems;
    };
    if (inStop) return restore();
    if (hasExited(pid)) return [];
    // The thread is running (a stop never came in time) and still ours: it will stop (the
    // interrupt or the syscall stop is pending) and must then be put back and let go, or
    // it would sit in a ptrace stop for as long as this process lives.
    restoreWhenStopped(pid, restore);
    return [`it did not stop in time; it will be restored and detached when it does`];
  }
}

/** How often a late stop is looked for, and for how long at most (then the kernel keeps it). */
const LATE_STOP_POLL_MS = 50;
const LATE_STOP_GIVE_UP_MS = 10 * 60 * 1000;

/** Polls (unref'd timer) for the late ptrace stop of pid, then runs restore. */
function restoreWhenStopped(pid: number, restore: () => string[]): void {
  const giveUpAt = Date.now() + LATE_STOP_GIVE_UP_MS;
  const timer = setInterval(() => {
    const [r, status] = waitpidRaw(pid, WALL | WNOHANG);
    if (r === pid) {
      const stop = decodeStatus(status);
      if (stop.kind !== 'gone') {
        const problems = restore();
        if (problems.length) console.error(`crinc: restoring process ${pid} after a late ptrace stop: ${problems.join('; ')}`);
      }
      clearInterval(timer);
    } else if (r < 0 || Date.now() > giveUpAt) {
      clearInterval(timer);
    }
  }, LATE_STOP_POLL_MS);
  timer.unref();
}

/**
 * The thread was stopped on its way out of a syscall that the kernel wanted to restart;
 * we ran other syscalls since, so the kernel's restart logic would now see our results.
 * Rewind the saved registers to re-execute the original syscall, the way the kernel does
 * when no handler runs (arch/x86/kernel/signal.c).
 */
function rewindInterruptedSyscall(regs: Buffer): void {
  const origRax = regs.readBigInt64LE(USER_REGS.origRax);
  if (origRax < 0n) return; // not stopped in a syscall
  const rax = -Number(regs.readBigInt64LE(USER_REGS.rax));
  const rip = regs.readBigUInt64LE(USER_REGS.rip);
  switch (rax) {
    case RestartErrno.ERESTARTSYS:
    case RestartErrno.ERESTARTNOINTR:
    case RestartErrno.ERESTARTNOHAND:
      regs.writeBigInt64LE(origRax, USER_REGS.rax);
      regs.writeBigUInt64LE(rip - BigInt(SYSCALL_INSTRUCTION.length), USER_REGS.rip);
      break;
    case RestartErrno.ERESTART_RESTARTBLOCK:
      // The interrupted call (nanosleep, clock_nanosleep, poll...) resumes through the
      // thread's restart block, which our syscalls did not touch.
      regs.writeBigInt64LE(BigInt(Sys.restart_syscall), USER_REGS.rax);
      regs.writeBigUInt64LE(rip - BigInt(SYSCALL_INSTRUCTION.length), USER_REGS.rip);
      break;
    default:
      break;
  }
  regs.writeBigInt64LE(-1n, USER_REGS.origRax);
}

