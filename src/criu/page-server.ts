// CRIU's page-server protocol (criu/page-xfer.c, criu/uffd.c, CRIU 4.2), spoken by crinc
// on a connected socket pair: one end is crinc's, the other is handed to CRIU as
// `--ps-socket FD`. No listening endpoint exists, so no other process can connect and
// add pages (docs/FORMAT.md, "Page streams").
//
// Every message starts with struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr;
// u64 dst_id; }: 32 bytes with the padding after cmd (nr_pages was a u32, 24 bytes in
// all, before 4.2; crinc refuses older CRIUs). cmd = command | flags << 16;
// dst_id = id << 8 | type.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import type { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { PAGE_BYTES } from '../store/format.js';
import { lastErrno, pipePair, setPipeCapacity, SPLICE_F_MOVE, spliceRaw, SyscallError } from '../sys/libc.js';
import { PE_PARENT, PE_PRESENT } from './images.js';

export const PS_IOV_BYTES = 32;
export const PS_IOV_OPEN2 = 4;
export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;
const PS_CMD_BITS = 16;
const PS_CMD_MASK = (1 << PS_CMD_BITS) - 1;
const PS_TYPE_BITS = 8n;
const PS_TYPE_MASK = (1n << PS_TYPE_BITS) - 1n;

/** dst_id's type: whose pagemap (criu/page-xfer.c, PS_TYPE_*). */
export const PS_TYPE_PID = 1;
export const PS_TYPE_SHMEM = 2;

/**
 * Capacity of the pipe that pages passed over go through on their way to /dev/null: the
 * most one splice moves (the default pipe-max-size, so that no limit needs raising).
 */
const DISCARD_PIPE_BYTES = 1024 * 1024;
/**
 * Bytes a page stream's sender may have in flight (SO_SNDBUFFORCE; the default is ~208
 * KiB): CRIU splices a 1 MiB pipe at a time, and with room for several the two sides
 * wake each other far less. A 1%-dirty checkpoint of a 1 GiB job froze it ~0.3 s instead
 * of ~0.45 s here.
 */
export const PAGE_STREAM_SEND_BUFFER_BYTES = 4 * 1024 * 1024;
/** A dump whose stream stays silent this long is failed: CRIU has stopped sending. */
export const PAGE_STREAM_SILENCE_MS = 120_000;

export class PageServerProtocolError extends Error {
  override name = 'PageServerProtocolError';
}

export interface PageServerMessage {
  command: number;
  flags: number;
  nrPages: number;
  vaddr: number;
  dstId: bigint;
}

export function decodeMessage(buf: Uint8Array): PageServerMessage {
  const view = Buffer.from(buf.buffer, buf.byteOffset, PS_IOV_BYTES);
  const cmd = view.readUInt32LE(0);
  const nrPages = view.readBigUInt64LE(8);
  const vaddr = view.readBigUInt64LE(16);
  if (nrPages > BigInt(Number.MAX_SAFE_INTEGER) || vaddr > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PageServerProtocolError(`page-server message with nr_pages ${nrPages}, vaddr 0x${vaddr.toString(16)} out of range`);
  }
  return { command: cmd & PS_CMD_MASK, flags: cmd >>> PS_CMD_BITS, nrPages: Number(nrPages), vaddr: Number(vaddr), dstId: view.readBigUInt64LE(24) };
}

export function encodeMessage(m: PageServerMessage): Buffer {
  const buf = Buffer.alloc(PS_IOV_BYTES);
  buf.writeUInt32LE(((m.flags << PS_CMD_BITS) | m.command) >>> 0, 0);
  buf.writeBigUInt64LE(BigInt(m.nrPages), 8);
  buf.writeBigUInt64LE(BigInt(m.vaddr), 16);
  buf.writeBigUInt64LE(m.dstId, 24);
  return buf;
}

/** The pagemap a dst_id names: its type (PS_TYPE_PID, PS_TYPE_SHMEM) and id (a PID inside the image, a shmem id). */
export function decodeDestination(dstId: bigint): { type: number; id: number } {
  return { type: Number(dstId & PS_TYPE_MASK), id: Number(dstId >> PS_TYPE_BITS) };
}

/** Where a run of pages comes from: read them into a buffer, or pass over them unread. */
export interface PageSource {
  read(into: Uint8Array): void;
  skip(bytes: number): void;
}

/** What a dump streams, in order: an open per pagemap, its page runs, then the end. */
export interface DumpStreamSink {
  /** A new pagemap starts (the previous one, if any, is complete). */
  open(type: number, id: number): Promise<void> | void;
  /** nrPages pages at vaddr with pagemap flags; when PE_PRESENT is set their bytes follow, to be taken from source. */
  pages(vaddr: number, nrPages: number, flags: number, source: PageSource): Promise<void>;
  /** Every pagemap is complete: called before CRIU is answered. */
  close(): void;
}

/**
 * Blocking reads of the socket into the caller's buffers. The job is frozen while pages
 * flow and the main thread has nothing else to do: a read(2) loop is the shortest path.
 * Pages passed over (clean ones) are spliced through a pipe into /dev/null: they never
 * reach user space, which makes an incremental checkpoint's stream cost about what the
 * kernel's move of the job's pages costs.
 */
class SocketSource implements PageSource {
  private discard: { pipeRead: number; pipeWrite: number; devNull: number } | undefined;

  constructor(private readonly fd: number) {}

  read(into: Uint8Array): void {
    let done = 0;
    while (done < into.length) {
      const n = this.readSome(into.subarray(done));
      if (n === 0) throw new PageServerProtocolError('CRIU closed its page stream before the end (it failed or was killed; its log says why)');
      done += n;
    }
  }

  /** One read(2); a signal that interrupts it (EINTR) is no error. */
  private readSome(into: Uint8Array): number {
    for (;;) {
      try {
        return readSync(this.fd, into, 0, into.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EINTR') continue;
        if (code === 'EAGAIN') throw silenceError();
        throw e;
      }
    }
  }

  skip(bytes: number): void {
    const d = (this.discard ??= this.openDiscard());
    for (let left = bytes; left > 0; ) {
      const moved = splice(this.fd, d.pipeWrite, Math.min(left, DISCARD_PIPE_BYTES), 'socket');
      if (moved === 0) throw new PageServerProtocolError('CRIU closed its page stream before the end (it failed or was killed; its log says why)');
      for (let inPipe = moved; inPipe > 0; ) inPipe -= splice(d.pipeRead, d.devNull, inPipe, 'pipe');
      left -= moved;
    }
  }

  private openDiscard(): { pipeRead: number; pipeWrite: number; devNull: number } {
    const [pipeRead, pipeWrite] = pipePair();
    try {
      setPipeCapacity(pipeWrite, DISCARD_PIPE_BYTES);
      return { pipeRead, pipeWrite, devNull: openSync('/dev/null', 'w') };
    } catch (e) {
      closeSync(pipeRead);
      closeSync(pipeWrite);
      throw e;
    }
  }

  close(): void {
    if (!this.discard) return;
    for (const fd of [this.discard.pipeRead, this.discard.pipeWrite, this.discard.devNull]) closeSync(fd);
    this.discard = undefined;
  }

  /** The next message, or null at a clean end of the stream (no byte of a message read). */
  message(header: Buffer): PageServerMessage | null {
    const n = this.readSome(header);
    if (n === 0) return null;
    if (n < PS_IOV_BYTES) this.read(header.subarray(n));
    return decodeMessage(header);
  }
}

function silenceError(): PageServerProtocolError {
  return new PageServerProtocolError(`CRIU sent nothing for ${PAGE_STREAM_SILENCE_MS / 1000} s in the middle of its page stream`);
}

/** One splice(2) of up to `bytes`; retried on EINTR, the socket's silence timeout (EAGAIN) an error. */
function splice(from: number, to: number, bytes: number, what: 'socket' | 'pipe'): number {
  for (;;) {
    const moved = spliceRaw(from, to, bytes, SPLICE_F_MOVE);
    if (moved >= 0) return moved;
    const errno = lastErrno();
    if (errno === osConstants.errno.EINTR) continue;
    if (errno === osConstants.errno.EAGAIN && what === 'socket') throw silenceError();
    throw new SyscallError(`splice from the page stream's ${what}`, errno);
  }
}

/**
 * Serves one `criu dump --page-server --ps-socket` stream on fd until CRIU's close: each
 * OPEN2 is answered "no parent" (crinc keeps no parent images: every page is sent),
 * each ADD_F's pages go to the sink, the close is answered 0. Throws on anything else;
 * the caller then shuts the socket so that CRIU's dump fails and it thaws the job.
 */
export async function receiveDump(fd: number, sink: DumpStreamSink): Promise<void> {
  const source = new SocketSource(fd);
  try {
    await serveDump(fd, source, sink);
  } finally {
    source.close();
  }
}

async function serveDump(fd: number, source: SocketSource, sink: DumpStreamSink): Promise<void> {
  const header = Buffer.alloc(PS_IOV_BYTES);
  let open: bigint | null = null;
  for (;;) {
    const m = source.message(header);
    if (m === null) throw new PageServerProtocolError('CRIU closed its page stream without closing the transfer (it failed or was killed; its log says why)');
    switch (m.command) {
      case PS_IOV_OPEN2: {
        const { type, id } = decodeDestination(m.dstId);
        if (type !== PS_TYPE_PID && type !== PS_TYPE_SHMEM) throw new PageServerProtocolError(`CRIU opened a pagemap of unknown type ${type}`);
        await sink.open(type, id);
        open = m.dstId;
        writeAll(fd, Buffer.from([0]));
        break;
      }
      case PS_IOV_ADD_F: {
        if (open === null || m.dstId !== open) throw new PageServerProtocolError(`CRIU sent pages for dst_id ${m.dstId} without opening it first`);
        if (m.flags & PE_PARENT) throw new PageServerProtocolError('CRIU sent a page hole in a parent image, though crinc said it keeps none');
        await sink.pages(m.vaddr, m.nrPages, m.flags, source);
        break;
      }
      case PS_IOV_CLOSE:
      case PS_IOV_FORCE_CLOSE: {
        sink.close();
        const status = Buffer.alloc(4);
        writeAll(fd, status);
        return;
      }
      default:
        throw new PageServerProtocolError(`CRIU sent page-server command 0x${m.command.toString(16)}, which a dump does not use`);
    }
  }
}

function writeAll(fd: number, data: Buffer): void {
  let done = 0;
  while (done < data.length) {
    try {
      done += writeSync(fd, data, done, data.length - done);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINTR') throw e;
    }
  }
}

/**
 * A lazy restore's reply: `bytes` holds whole pages from the asked address on (at most as
 * many as asked; the daemon asks again for the rest). The server calls `sent` once the
 * bytes are written out, so the lookup may fill their buffer again.
 */
export interface ServedPages {
  bytes: Uint8Array;
  sent(): void;
}

/** Pages for a lazy restore: up to nrPages at vaddr of the process whose PID inside the image is pid. */
export type PageLookup = (pid: number, vaddr: number, nrPages: number) => Promise<ServedPages>;

/** Where a lazy restore's pages come from. */
export interface RestorePages {
  /** Called one request at a time, the next once the last one's promise settled. */
  lookup: PageLookup;
  /** Settles once no read of the source is in flight (it may read ahead of requests). */
  idle(): Promise<void>;
}

/**
 * Answers `criu lazy-pages --page-server --ps-socket` on socket: each GET with a header
 * (ADD_F | PE_PRESENT, the same vaddr and dst_id, the pages sent) and the pages, in
 * request order; the daemon's FORCE_CLOSE with 0. Resolves when the daemon closed the
 * transfer (every page is in), rejects on a failed lookup or a broken stream.
 */
export function serveLazyPages(socket: Socket, lookup: PageLookup): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending: Buffer = Buffer.alloc(0);
    let chain = Promise.resolve();
    let closed = false;
    const fail = (e: unknown) => {
      socket.destroy();
      reject(e);
    };
    socket.on('data', (data: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, data]) : data;
      while (pending.length >= PS_IOV_BYTES && !closed) {
        const m = decodeMessage(pending.subarray(0, PS_IOV_BYTES));
        pending = pending.subarray(PS_IOV_BYTES);
        if (m.command === PS_IOV_GET) {
          chain = chain.then(async () => {
            const pages = await lookup(Number(m.dstId), m.vaddr, m.nrPages);
            socket.write(encodeMessage({ command: PS_IOV_ADD_F, flags: PE_PRESENT, nrPages: pages.bytes.length / PAGE_BYTES, vaddr: m.vaddr, dstId: m.dstId }));
            socket.write(pages.bytes, () => pages.sent());
          });
          chain.catch(fail);
        } else if (m.command === PS_IOV_CLOSE || m.command === PS_IOV_FORCE_CLOSE) {
          closed = true;
          chain = chain.then(() => {
            socket.end(Buffer.alloc(4));
            resolve();
          });
          chain.catch(fail);
        } else {
          fail(new PageServerProtocolError(`criu lazy-pages sent page-server command 0x${m.command.toString(16)}, which a lazy restore does not use`));
          return;
        }
      }
    });
    socket.on('error', (e) => fail(e));
    socket.on('close', () => {
      if (!closed) fail(new PageServerProtocolError('criu lazy-pages closed its page stream before every page was in (it failed or was killed; its log says why)'));
    });
  });
}
