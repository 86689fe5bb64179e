// Materialize: a stored file written back out byte for byte, every chunk read from its
// pack and checked against its id on the way (a mismatch throws; nothing is guessed).
import { closeSync, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CHUNK_ID_BYTES } from '../store/format.js';
import { type CheckpointRecord, type ChunkCodec, type FileManifest, isZeroId, type Repository } from '../store/repository.js';
import type { Codecs } from './codecs.js';

export function materializeFile(repo: Repository, manifest: FileManifest, codec: ChunkCodec, dest: string): void {
  const fd = openSync(dest, 'w', 0o600);
  try {
    const count = manifest.ids.length / CHUNK_ID_BYTES;
    if (count !== Math.ceil(manifest.size / manifest.blockBytes)) {
      throw new Error(`manifest of ${manifest.path} has ${count} blocks for ${manifest.size} bytes`);
    }
    for (let i = 0; i < count; i++) {
      // Zero blocks stay holes: ftruncate below gives them their zeros.
      if (isZeroId(manifest.ids, i)) continue;
      const data = repo.readChunk(manifest.ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), codec);
      const expected = Math.min(manifest.blockBytes, manifest.size - i * manifest.blockBytes);
      if (data.length !== expected) throw new Error(`block ${i} of ${manifest.path} holds ${data.length} bytes, ${expected} expected`);
      let done = 0;
      while (done < data.length) done += writeSync(fd, data, done, data.length - done, i * manifest.blockBytes + done);
    }
    ftruncateSync(fd, manifest.size);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A checkpoint's CRIU image directory, as CRIU wrote it. */
export function materializeImages(repo: Repository, images: FileManifest[], codec: ChunkCodec, dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const m of images) {
    if (m.role !== 'image') throw new Error(`${m.path} is not an image file`);
    if (m.path.includes('/')) throw new Error(`image file name ${m.path} has a slash`);
    materializeFile(repo, m, codec, join(dir, m.path));
  }
}

export class ExportTargetError extends Error {
  override name = 'ExportTargetError';
}

/** Writes a checkpoint out: images into dir, the job's files under dir/files/<absolute path>. */
export function exportCheckpoint(repo: Repository, codecs: Codecs, cp: CheckpointRecord, dir: string): { images: number; files: number } {
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new ExportTargetError(`${dir} is not empty: export into a new or empty directory`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const all = repo.checkpointFiles(cp.id, codecs.chunks);
  const images = all.filter((f) => f.role === 'image');
  materializeImages(repo, images, codecs.chunks, dir);
  const jobFiles = all.filter((f) => f.role === 'job-file');
  for (const f of jobFiles) {
    const dest = join(dir, 'files', f.path);
    mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
    materializeFile(repo, f, codecs.chunks, dest);
  }
  return { images: images.length, files: jobFiles.length };
}
