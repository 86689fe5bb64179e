// The job's files: CRIU keeps no file contents and refuses to restore a process whose
// open file changed size, so crinc keeps, per checkpoint, the content of the regular
// files the job has open for writing, and puts them back before `criu restore`.
import { closeSync, constants as fsConstants, copyFileSync, existsSync, fchmodSync, fchownSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { PageCodec } from '../codec/page-codec.js';
import { FILE_BLOCK_BYTES } from '../store/format.js';
import type { FileManifest } from '../store/repository.js';
import { filesOpenForWriting, processTree } from './procfs.js';
import { blockIds } from './ingest.js';

export interface FileFacts {
  /** Kernel-maintained facts that change whenever the content can have changed. */
  identity: string;
  mode: number;
  uid: number;
  gid: number;
}

export function fileFacts(path: string): FileFacts {
  const st = statSync(path, { bigint: true });
  return {
    identity: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
  };
}

export interface CapturedFile extends FileFacts {
  path: string;
  /** A copy taken while the job was frozen; absent when the previous checkpoint's content is reused. */
  copy?: string;
  /** The previous checkpoint's manifest, reused because the file's identity did not change. */
  unchanged?: FileManifest;
}

/**
 * Runs while the job is frozen: lists the files open for writing and copies those whose
 * identity changed since the previous checkpoint into the staging directory. Files under
 * crincDir are crinc's own: while CRIU dumps a process, its parasite in there holds
 * CRIU's log open for writing.
 */
export function captureJobFiles(rootPid: number, stagingDir: string, previous: Map<string, FileManifest>, crincDir: string): CapturedFile[] {
  const out: CapturedFile[] = [];
  const paths = filesOpenForWriting(processTree(rootPid)).filter((p) => !/^\/(proc|sys)\//.test(p) && !p.startsWith(`${crincDir}/`));
  mkdirSync(stagingDir, { recursive: true, mode: 0o700 });
  paths.forEach((path, i) => {
    const facts = fileFacts(path);
    const prev = previous.get(path);
    if (prev && prev.identity === facts.identity) {
      out.push({ path, ...facts, unchanged: prev });
      return;
    }
    const copy = join(stagingDir, String(i));
    copyFileSync(path, copy);
    out.push({ path, ...facts, copy });
  });
  return out;
}

export interface FileIngestor {
  blocks(path: string, blockBytes: number): Uint8Array;
}

/** Manifests for captured files, after the thaw. */
export function jobFileManifests(files: CapturedFile[], ingest: FileIngestor): FileManifest[] {
  return files.map((f) => {
    const meta = { mode: f.mode, uid: f.uid, gid: f.gid, identity: f.identity };
    if (f.unchanged) return { ...f.unchanged, ...meta };
    return {
      role: 'job-file' as const,
      path: f.path,
      size: statSync(f.copy!).size,
      blockBytes: FILE_BLOCK_BYTES,
      ids: ingest.blocks(f.copy!, FILE_BLOCK_BYTES),
      ...meta,
    };
  });
}

/** Block ids of a file as it is now, without storing anything. */
export function currentBlockIds(path: string, codec: PageCodec): Uint8Array {
  return blockIds(path, FILE_BLOCK_BYTES, codec, Buffer.allocUnsafe(FILE_BLOCK_BYTES));
}

/** True when the file on disk already holds exactly the manifest's content. */
export function fileMatches(manifest: FileManifest, codec: PageCodec): boolean {
  if (!existsSync(manifest.path)) return false;
  const st = statSync(manifest.path);
  if (!st.isFile() || st.size !== manifest.size) return false;
  return Buffer.compare(currentBlockIds(manifest.path, codec), manifest.ids) === 0;
}

/**
 * Puts a file back as the checkpoint had it, from a copy already materialized (and so
 * verified) in staging: written in place, so the inode stays, then size, mode, owner.
 */
export function installFile(staged: string, manifest: FileManifest): void {
  mkdirSync(dirname(manifest.path), { recursive: true });
  const src = openSync(staged, 'r');
  const dst = openSync(manifest.path, fsConstants.O_RDWR | fsConstants.O_CREAT, manifest.mode);
  try {
    const buf = Buffer.allocUnsafe(FILE_BLOCK_BYTES * 16);
    let offset = 0;
    for (;;) {
      const n = readSync(src, buf, 0, buf.length, offset);
      if (n === 0) break;
      let done = 0;
      while (done < n) done += writeSync(dst, buf, done, n - done, offset + done);
      offset += n;
    }
    if (offset !== manifest.size) throw new Error(`${staged}: ${offset} bytes materialized, ${manifest.size} expected`);
    ftruncateSync(dst, manifest.size);
    fchmodSync(dst, manifest.mode);
    fchownSync(dst, manifest.uid, manifest.gid);
    fsyncSync(dst);
  } finally {
    closeSync(src);
    closeSync(dst);
  }
}
