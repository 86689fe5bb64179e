// Pack files: append-only containers of compressed chunks (layout in docs/FORMAT.md).
// A pack and its chunk table (.idx) are written under .partial names as blobs arrive,
// fsynced, then renamed: a file without that suffix is always complete. Only the index
// decides whether a pack's chunks are live.
import { closeSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { ensureDirDurable, fsyncDir } from './durable.js';
import { PackMissingError } from './errors.js';
import type { WriterJournal } from './journal.js';
import {
  BLOB_HEADER_BYTES,
  CHUNK_ID_BYTES,
  type Compression,
  PACK_HEADER_BYTES,
  PACK_INDEX_ENTRY_BYTES,
  PACK_INDEX_HEADER_BYTES,
  PACK_INDEX_SUFFIX,
  PACK_MAGIC,
  PACK_TARGET_BYTES,
  PACK_TRAILER_BYTES,
  PACK_TRAILER_MAGIC,
  PACK_SUFFIX,
  PACKS_DIR,
  STORE_FORMAT_VERSION,
  copyId,
  putU32LE,
  writePackIndexEntry,
  writePackIndexHeader,
} from './format.js';

/**
 * Writes are gathered into a buffer of this size before they reach the file: small
 * enough to stay in the CPU's cache between the copy in and the write out (measured
 * here: a 1 GiB ingest's copies into a 4 MiB buffer took ~230 ms, into 256 KiB ~50 ms).
 */
const PACK_WRITE_BUFFER_BYTES = 256 * 1024;
/** Chunk table entries gathered before they reach the .idx file (1 MiB). */
const PACK_TABLE_BUFFER_ENTRIES = 32 * 1024;
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
  return join(storeDir, PACKS_DIR, name.slice(0, 2), `${name}${PACK_SUFFIX}`);
}

/** Where a pack's chunk table is: beside the pack. */
export function packTablePath(storeDir: string, name: string): string {
  return join(storeDir, PACKS_DIR, name.slice(0, 2), `${name}${PACK_INDEX_SUFFIX}`);
}

/**
 * Writes one pack and its chunk table side by side, so that neither the table nor the
 * pack's data is held in memory: a commit only writes their tails and renames them.
 */
export class PackWriter {
  readonly name = randomBytes(16).toString('hex');
  private readonly finalPath: string;
  private readonly partialPath: string;
  private readonly tableFinalPath: string;
  private readonly tablePartialPath: string;
  private fd: number;
  private tableFd: number;
  private size = 0;
  private chunkCount = 0;
  private buffer = Buffer.allocUnsafe(PACK_WRITE_BUFFER_BYTES);
  private buffered = 0;
  private tableBuffer = Buffer.alloc(PACK_INDEX_HEADER_BYTES + PACK_TABLE_BUFFER_ENTRIES * PACK_INDEX_ENTRY_BYTES);
  /** The header's room first: it is written last, when the count and size are known. */
  private tableBuffered = PACK_INDEX_HEADER_BYTES;

  constructor(storeDir: string, journal: WriterJournal) {
    journal.note(this.name);
    this.finalPath = packPath(storeDir, this.name);
    this.partialPath = this.finalPath + PARTIAL_SUFFIX;
    this.tableFinalPath = packTablePath(storeDir, this.name);
    this.tablePartialPath = this.tableFinalPath + PARTIAL_SUFFIX;
    // A new prefix directory must itself be durable before the index can name the pack.
    ensureDirDurable(dirname(this.finalPath));
    this.fd = openSync(this.partialPath, 'wx', 0o600);
    this.tableFd = openSync(this.tablePartialPath, 'wx', 0o600);
    const header = Buffer.alloc(PACK_HEADER_BYTES);
    PACK_MAGIC.copy(header, 0);
    header.writeUInt32LE(STORE_FORMAT_VERSION, 8);
    this.append(header);
  }

  get bytes(): number {
    return this.size;
  }

  /** Blobs added so far; the next one's ordinal. */
  get count(): number {
    return this.chunkCount;
  }

  get full(): boolean {
    return this.size >= PACK_TARGET_BYTES;
  }

  add(id: Uint8Array, data: Uint8Array, rawLength: number, compression: Compression): void {
    if (id.length !== CHUNK_ID_BYTES) throw new Error(`chunk id of ${id.length} bytes`);
    if (this.buffered + BLOB_HEADER_BYTES > this.buffer.length) this.flush();
    // The blob header goes straight into the write buffer.
    const h = this.buffered;
    copyId(id, 0, this.buffer, h);
    putU32LE(this.buffer, h + 16, rawLength);
    putU32LE(this.buffer, h + 20, data.length);
    putU32LE(this.buffer, h + 24, compression); // compression u8 + 3 reserved zero bytes
    this.buffered += BLOB_HEADER_BYTES;
    this.size += BLOB_HEADER_BYTES;
    if (this.tableBuffered + PACK_INDEX_ENTRY_BYTES > this.tableBuffer.length) this.flushTable();
    writePackIndexEntry(this.tableBuffer, this.tableBuffered, id, 0, this.size, data.length, rawLength, compression);
    this.tableBuffered += PACK_INDEX_ENTRY_BYTES;
    this.chunkCount++;
    this.append(data);
  }

  /** Writes the trailer and the table's header, fsyncs and gives both files their final names. */
  finish(): void {
    const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
    trailer.writeUInt32LE(this.chunkCount, 0);
    PACK_TRAILER_MAGIC.copy(trailer, 8);
    this.append(trailer);
    this.flush();
    this.flushTable();
    const header = Buffer.alloc(PACK_INDEX_HEADER_BYTES);
    writePackIndexHeader(header, this.chunkCount, this.size);
    writeAll(this.tableFd, header, 0, header.length, 0);
    for (const fd of [this.fd, this.tableFd]) {
      fsyncSync(fd);
      closeSync(fd);
    }
    this.fd = -1;
    this.tableFd = -1;
    renameSync(this.partialPath, this.finalPath);
    renameSync(this.tablePartialPath, this.tableFinalPath);
    fsyncDir(dirname(this.finalPath));
    // A checkpoint keeps its finished packs until it commits: without this, a large
    // job's checkpoint (a pack per 64 MiB) would hold write buffers per pack.
    this.buffer = Buffer.alloc(0);
    this.tableBuffer = Buffer.alloc(0);
  }

  /** Drops an uncommitted pack and its table, finished or not: nothing references them. */
  abandon(): void {
    for (const fd of [this.fd, this.tableFd]) if (fd >= 0) closeSync(fd);
    this.fd = -1;
    this.tableFd = -1;
    for (const path of [this.partialPath, this.finalPath, this.tablePartialPath, this.tableFinalPath]) rmSync(path, { force: true });
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
    writeAll(this.fd, this.buffer, 0, this.buffered);
    this.buffered = 0;
  }

  /** Appends the gathered table entries (the first write leaves the header's room, zeros until finish). */
  private flushTable(): void {
    writeAll(this.tableFd, this.tableBuffer, 0, this.tableBuffered);
    this.tableBuffered = 0;
  }
}

/** Writes buf[from, to) to fd, at `position` or at the file's offset. */
function writeAll(fd: number, buf: Buffer, from: number, to: number, position: number | null = null): void {
  let done = from;
  while (done < to) done += writeSync(fd, buf, done, to - done, position === null ? null : position + done - from);
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
