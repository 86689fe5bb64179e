// Small files that must survive a power cut whole or not at all: written under a
// temporary name, fsynced, then renamed (or linked, to refuse an existing name) into
// place, and the directory fsynced.
import { closeSync, fsyncSync, linkSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Makes the directory (0700) and, when it was new, makes its entry durable. */
export function ensureDirDurable(dir: string): void {
  if (mkdirSync(dir, { recursive: true, mode: 0o700 }) !== undefined) fsyncDir(dirname(dir));
}

function writeTemp(path: string, data: Uint8Array): string {
  ensureDirDurable(dirname(path));
  const temp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  const fd = openSync(temp, 'wx', 0o600);
  try {
    let done = 0;
    while (done < data.length) done += writeSync(fd, data, done, data.length - done);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return temp;
}

/** Replaces path with data, atomically and durably. */
export function writeFileDurable(path: string, data: Uint8Array): void {
  const temp = writeTemp(path, data);
  renameSync(temp, path);
  fsyncDir(dirname(path));
}

/** Creates path with data, atomically and durably, unless it exists: false then (nothing written). */
export function createFileDurable(path: string, data: Uint8Array): boolean {
  const temp = writeTemp(path, data);
  try {
    linkSync(temp, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    rmSync(temp, { force: true });
  }
  fsyncDir(dirname(path));
  return true;
}

/** Removes files and makes the removal durable (before the index forgets what they held). */
export function removeFilesDurable(paths: string[]): void {
  const dirs = new Set<string>();
  for (const p of paths) {
    rmSync(p, { force: true });
    dirs.add(dirname(p));
  }
  for (const d of dirs) {
    try {
      fsyncDir(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}
