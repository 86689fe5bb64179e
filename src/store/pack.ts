// Pack files: append-only containers of compressed chunks (layout in docs/FORMAT.md).
// A pack is written under a .partial name, fsynced, then renamed: a pack file without
// that suffix is always complete. Only the index decides whether its chunks are live.
import { closeSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { ensureDirDurable, fsyncDir } from './durable.js';
import { PackMissingError } from './errors.js';
import type { WriterJournal } from './journal.js';
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

/** The chunks of one pack, in typed arrays: no object per chunk. */
export class PackedChunks {
  count = 0;
  ids = new Uint8Array(1024 * CHUNK_ID_BYTES);
  offsets = new Float64Array(1024); // of each blob's data, past its header
  storedLengths = new Uint32Array(1024);
  rawLengths = new Uint32Array(1024);
  compressions = new Uint8Array(1024);

  push(id: Uint8Array, offset: number, storedLength: number, rawLength: number, compression: Compression): void {
    if (this.count === this.offsets.length) this.grow();
    const i = this.count++;
    this.ids.set(id, i * CHUNK_ID_BYTES);
    this.offsets[i] = offset;
    this.storedLengths[i] = storedLength;
    this.rawLengths[i] = rawLength;
    this.compressions[i] = compression;
  }

  id(i: number): Uint8Array {
    return this.ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
  }

  private grow(): void {
    const n = this.offsets.length * 2;
    const ids = new Uint8Array(n * CHUNK_ID_BYTES);
    ids.set(this.ids);
    this.ids = ids;
    const offsets = new Float64Array(n);
    offsets.set(this.offsets);
    this.offsets = offsets;
    const stored = new Uint32Array(n);
    stored.set(this.storedLengths);
    this.storedLengths = stored;
    const raw = new Uint32Array(n);
    raw.set(this.rawLengths);
    this.rawLengths = raw;
    const compressions = new Uint8Array(n);
    compressions.set(this.compressions);
    this.compressions = compressions;
  }
}

export function packPath(storeDir: string, name: string): string {
  return join(storeDir, PACKS_DIR, name.slice(0, 2), `${name}.pack`);
}

export class PackWriter {
  readonly name = randomBytes(16).toString('hex');
  private table: PackedChunks | undefined = new PackedChunks();
  private readonly finalPath: string;
  private readonly partialPath: string;
  private fd: number;
  private size = 0;
  private buffer = Buffer.allocUnsafe(PACK_WRITE_BUFFER_BYTES);
  private buffered = 0;

  constructor(storeDir: string, journal: WriterJournal) {
    journal.note(this.name);
    this.finalPath = packPath(storeDir, this.name);
    this.partialPath = this.finalPath + PARTIAL_SUFFIX;
    // A new prefix directory must itself be durable before the index can name the pack.
    ensureDirDurable(dirname(this.finalPath));
    this.fd = openSync(this.partialPath, 'wx', 0o600);
    const header = Buffer.alloc(PACK_HEADER_BYTES);
    PACK_MAGIC.copy(header, 0);
    header.writeUInt32LE(STORE_FORMAT_VERSION, 8);
    this.append(header);
  }

  get bytes(): number {
    return this.size;
  }

  /** The chunks written so far; gone once releaseChunks() dropped them (the table is on disk then). */
  get chunks(): PackedChunks {
    if (!this.table) throw new Error(`pack ${this.name}: its chunk table was released`);
    return this.table;
  }

  /** Drops the in-memory chunk table of a finished pack whose .idx is written. */
  releaseChunks(): void {
    this.table = undefined;
  }

  get full(): boolean {
    return this.size >= PACK_TARGET_BYTES;
  }

  add(id: Uint8Array, data: Uint8Array, rawLength: number, compression: Compression): void {
    if (id.length !== CHUNK_ID_BYTES) throw new Error(`chunk id of ${id.length} bytes`);
    if (this.buffered + BLOB_HEADER_BYTES > this.buffer.length) this.flush();
    // The blob header goes straight into the write buffer.
    const h = this.buffered;
    this.buffer.set(id, h);
    this.buffer.writeUInt32LE(rawLength, h + 16);
    this.buffer.writeUInt32LE(data.length, h + 20);
    this.buffer.writeUInt32LE(compression, h + 24); // compression u8 + 3 reserved zero bytes
    this.buffered += BLOB_HEADER_BYTES;
    this.size += BLOB_HEADER_BYTES;
    this.chunks.push(id, this.size, data.length, rawLength, compression);
    this.append(data);
  }

  /** Writes the trailer, fsyncs and gives the pack its final name. */
  finish(): void {
    const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
    trailer.writeUInt32LE(this.chunks.count, 0);
    PACK_TRAILER_MAGIC.copy(trailer, 8);
    this.append(trailer);
    this.flush();
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = -1;
    renameSync(this.partialPath, this.finalPath);
    fsyncDir(dirname(this.finalPath));
    // A checkpoint keeps its finished packs until it commits: without this, a large
    // job's checkpoint (a pack per 64 MiB) would hold a write buffer per pack.
    this.buffer = Buffer.alloc(0);
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

  /** Reads into target from offset; returns the bytes read (fewer only at the pack's end). */
  readInto(pack: string, offset: number, target: Uint8Array): number {
    let fd = this.fds.get(pack);
    if (fd === undefined) {
      try {
        fd = openSync(packPath(this.storeDir, pack), 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new PackMissingError(pack, this.storeDir);
        throw e;
      }
      this.fds.set(pack, fd);
    }
    let done = 0;
    while (done < target.length) {
      const n = readSync(fd, target, done, target.length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** Closes the pack's file, if open: it is about to be deleted. */
  forget(pack: string): void {
    const fd = this.fds.get(pack);
    if (fd !== undefined) closeSync(fd);
    this.fds.delete(pack);
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
