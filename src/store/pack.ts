// Pack files: append-only containers of compressed chunks (layout in docs/FORMAT.md).
// A pack is written under a .partial name, fsynced, then renamed: a pack file without
// that suffix is always complete. Only the index decides whether its chunks are live.
import { closeSync, fsyncSync, mkdirSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import {
  BLOB_HEADER_BYTES,
  CHUNK_ID_BYTES,
  Compression,
  PACK_HEADER_BYTES,
  PACK_MAGIC,
  PACK_TARGET_BYTES,
  PACK_TRAILER_BYTES,
  PACK_TRAILER_MAGIC,
  PACKS_DIR,
  STORE_FORMAT_VERSION,
} from './format.js';

/** Writes are gathered into a buffer of this size before they reach the file. */
const PACK_WRITE_BUFFER_BYTES = 4 * 1024 * 1024;
export const PARTIAL_SUFFIX = '.partial';

export interface PackedChunk {
  id: Uint8Array;
  offset: number; // of the blob's data, past its header
  storedLength: number;
  rawLength: number;
  compression: Compression;
}

export function packPath(storeDir: string, name: string): string {
  return join(storeDir, PACKS_DIR, name.slice(0, 2), `${name}.pack`);
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export class PackWriter {
  readonly name = randomBytes(16).toString('hex');
  readonly chunks: PackedChunk[] = [];
  private readonly finalPath: string;
  private readonly partialPath: string;
  private fd: number;
  private size = 0;
  private buffer = Buffer.allocUnsafe(PACK_WRITE_BUFFER_BYTES);
  private buffered = 0;

  constructor(storeDir: string) {
    this.finalPath = packPath(storeDir, this.name);
    this.partialPath = this.finalPath + PARTIAL_SUFFIX;
    // A new prefix directory must itself be durable before the index can name the pack.
    if (mkdirSync(dirname(this.finalPath), { recursive: true, mode: 0o700 }) !== undefined) {
      fsyncDir(dirname(dirname(this.finalPath)));
    }
    this.fd = openSync(this.partialPath, 'wx', 0o600);
    const header = Buffer.alloc(PACK_HEADER_BYTES);
    PACK_MAGIC.copy(header, 0);
    header.writeUInt32LE(STORE_FORMAT_VERSION, 8);
    this.append(header);
  }

  get bytes(): number {
    return this.size;
  }

  get full(): boolean {
    return this.size >= PACK_TARGET_BYTES;
  }

  add(id: Uint8Array, data: Uint8Array, rawLength: number, compression: Compression): void {
    if (id.length !== CHUNK_ID_BYTES) throw new Error(`chunk id of ${id.length} bytes`);
    const header = Buffer.alloc(BLOB_HEADER_BYTES);
    header.set(id, 0);
    header.writeUInt32LE(rawLength, 16);
    header.writeUInt32LE(data.length, 20);
    header.writeUInt8(compression, 24);
    this.append(header);
    this.chunks.push({ id, offset: this.size, storedLength: data.length, rawLength, compression });
    this.append(data);
  }

  /** Writes the trailer, fsyncs and gives the pack its final name. */
  finish(): void {
    const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
    trailer.writeUInt32LE(this.chunks.length, 0);
    PACK_TRAILER_MAGIC.copy(trailer, 8);
    this.append(trailer);
    this.flush();
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = -1;
    renameSync(this.partialPath, this.finalPath);
    fsyncDir(dirname(this.finalPath));
  }

  /** Drops an uncommitted pack, finished or not: nothing references it. */
  abandon(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
    rmSync(this.partialPath, { force: true });
    rmSync(this.finalPath, { force: true });
  }

  private append(data: Uint8Array): void {
    if (this.buffered + data.length > this.buffer.length) this.flush();
    if (data.length > this.buffer.length) {
      writeSync(this.fd, data);
    } else {
      this.buffer.set(data, this.buffered);
      this.buffered += data.length;
    }
    this.size += data.length;
  }

  private flush(): void {
    let done = 0;
    while (done < this.buffered) done += writeSync(this.fd, this.buffer, done, this.buffered - done);
    this.buffered = 0;
  }
}

/** Keeps pack files open for reads; closed all together. */
export class PackReader {
  private readonly fds = new Map<string, number>();

  constructor(private readonly storeDir: string) {}

  read(pack: string, offset: number, length: number): Buffer {
    let fd = this.fds.get(pack);
    if (fd === undefined) {
      fd = openSync(packPath(this.storeDir, pack), 'r');
      this.fds.set(pack, fd);
    }
    const out = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return done === length ? out : out.subarray(0, done);
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
