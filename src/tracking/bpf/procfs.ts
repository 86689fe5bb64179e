// What the job tracker reads from /proc: process trees, open files, file mappings.
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { isGone } from '../../sys/proc.js';
import type { FileIdentity } from './events.js';

/** The thread group (process) a pid belongs to; null when it does not exist. */
export function threadGroupOf(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /^Tgid:\s+(\d+)$/m.exec(status);
    return match ? Number(match[1]) : null;
  } catch (error) {
    if (isGone(error)) return null;
    throw error;
  }
}

/** st_dev as stat(2) reports it (glibc's makedev) for the kernel's dev_t (major << 20 | minor). */
export function statDevOf(kernelDev: number): bigint {
  const major = BigInt(kernelDev >>> 20);
  const minor = BigInt(kernelDev & 0xfffff);
  return ((major & 0xfffn) << 8n) | ((major & ~0xfffn) << 32n) | (minor & 0xffn) | ((minor & ~0xffn) << 12n);
}

/** The path of fd in process tgid when it is that file; null otherwise. */
function pathIfSameFile(tgid: number, fd: number, file: FileIdentity): string | null {
  const link = `/proc/${tgid}/fd/${fd}`;
  try {
    const stat = statSync(link, { bigint: true });
    if (stat.ino !== BigInt(file.ino) || stat.dev !== statDevOf(file.dev)) return null;
    return readlinkSync(link);
  } catch (error) {
    if (isGone(error)) return null;
    throw error;
  }
}

function openFds(tgid: number): number[] {
  try {
    return readdirSync(`/proc/${tgid}/fd`).map(Number);
  } catch (error) {
    if (isGone(error)) return [];
    throw error;
  }
}

/**
 * Where one of the processes has the file open now: first at the fds the events named
 * (hints), then at any of their fds. null when none of them has it open.
 */
export function findOpenPath(file: FileIdentity, hints: { tgid: number; fd: number }[], tgids: number[]): string | null {
  for (const { tgid, fd } of hints) {
    const path = pathIfSameFile(tgid, fd, file);
    if (path !== null) return path;
  }
  for (const tgid of tgids) {
    for (const fd of openFds(tgid)) {
      const path = pathIfSameFile(tgid, fd, file);
      if (path !== null) return path;
    }
  }
  return null;
}

export interface FileMapping {
  start: number;
  end: number;
  /** File offset of start. */
  offset: number;
  /** "major:minor" in hex, as the kernel writes it. */
  device: string;
  ino: number;
}

/** The file-backed mappings of a process (empty when it is gone). */
export function fileMappings(tgid: number): FileMapping[] {
  let maps: string;
  try {
    maps = readFileSync(`/proc/${tgid}/maps`, 'utf8');
  } catch (error) {
    if (isGone(error)) return [];
    throw error;
  }
  const mappings: FileMapping[] = [];
  // start-end perms offset major:minor inode [path]
  for (const line of maps.split('\n')) {
    const fields = line.split(/\s+/, 5);
    if (fields.length < 5 || fields[4] === '0') continue;
    const [range, , offset, device, ino] = fields as [string, string, string, string, string];
    const dash = range.indexOf('-');
    mappings.push({
      start: parseInt(range.slice(0, dash), 16),
      end: parseInt(range.slice(dash + 1), 16),
      offset: parseInt(offset, 16),
      device,
      ino: Number(ino),
    });
  }
  return mappings;
}
