// Readers for the CRIU image files crinc interprets. Layout (CRIU's images/ and
// criu/include/magic.h): a u32 "common" magic, the image's own u32 magic, then entries,
// each a u32 little-endian length followed by that many bytes of protobuf.
// pages-*.img is raw: the pages of the pagemap's PRESENT entries, back to back.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bytesField, decodeMessage, encodeVarintField, varintField } from './protobuf.js';

export const IMG_COMMON_MAGIC = 0x54564319;
export const IMG_SERVICE_MAGIC = 0x55105940;
export const PAGEMAP_MAGIC = 0x56084025;
export const STATS_MAGIC = 0x57093306;

/** pagemap_entry.flags bits (criu/include/pagemap.h). */
export const PE_PARENT = 1 << 0;
export const PE_LAZY = 1 << 1;
export const PE_PRESENT = 1 << 2;

export class CriuImageError extends Error {
  override name = 'CriuImageError';
}

export interface PagemapEntry {
  vaddr: bigint;
  nrPages: number;
  flags: number;
}

export interface Pagemap {
  /** The N of the pages-N.img file that holds this pagemap's page data. */
  pagesId: number;
  entries: PagemapEntry[];
}

function readEntries(path: string, magic: number): Uint8Array[] {
  const buf = readFileSync(path);
  if (buf.length < 8) throw new CriuImageError(`${path}: too short to be a CRIU image`);
  const common = buf.readUInt32LE(0);
  if (common !== IMG_COMMON_MAGIC && common !== IMG_SERVICE_MAGIC) {
    throw new CriuImageError(`${path}: not a CRIU image (magic 0x${common.toString(16)})`);
  }
  const own = buf.readUInt32LE(4);
  if (own !== magic) {
    throw new CriuImageError(`${path}: image magic 0x${own.toString(16)}, expected 0x${magic.toString(16)}`);
  }
  const entries: Uint8Array[] = [];
  let pos = 8;
  while (pos < buf.length) {
    if (pos + 4 > buf.length) throw new CriuImageError(`${path}: truncated entry header at ${pos}`);
    const len = buf.readUInt32LE(pos);
    pos += 4;
    if (pos + len > buf.length) throw new CriuImageError(`${path}: truncated entry at ${pos}`);
    entries.push(buf.subarray(pos, pos + len));
    pos += len;
  }
  return entries;
}

export function readPagemap(path: string): Pagemap {
  const [head, ...rest] = readEntries(path, PAGEMAP_MAGIC);
  if (!head) throw new CriuImageError(`${path}: pagemap without a head entry`);
  const pagesId = varintField(decodeMessage(head), 1);
  if (pagesId === undefined) throw new CriuImageError(`${path}: pagemap head has no pages_id`);
  const entries = rest.map((raw) => {
    const f = decodeMessage(raw);
    const vaddr = varintField(f, 1);
    // CRIU 4.x writes nr_pages as field 5 (uint64) and leaves the old uint32 field 2 at 0.
    const nrPages = varintField(f, 5) ?? varintField(f, 2);
    if (vaddr === undefined || nrPages === undefined) {
      throw new CriuImageError(`${path}: pagemap entry without vaddr or nr_pages`);
    }
    // Before flags existed, an entry without in_parent was present.
    const inParent = varintField(f, 3) === 1n;
    const flags = Number(varintField(f, 4) ?? BigInt(inParent ? PE_PARENT : PE_PRESENT));
    return { vaddr, nrPages: Number(nrPages), flags };
  });
  return { pagesId: Number(pagesId), entries };
}

/**
 * A pagemap image built entry by entry, byte for byte as CRIU writes one into a local
 * image directory (criu/page-xfer.c, write_pagemap_loc; protobuf-c writes the required
 * compat_nr_pages as 0, then flags and the 64-bit nr_pages).
 */
export class PagemapImageBuilder {
  private readonly parts: Buffer[] = [];
  private pending: number[] = [];

  constructor(readonly pagesId: number) {
    const magic = Buffer.alloc(8);
    magic.writeUInt32LE(IMG_COMMON_MAGIC, 0);
    magic.writeUInt32LE(PAGEMAP_MAGIC, 4);
    this.parts.push(magic);
    const head: number[] = [];
    encodeVarintField(head, 1, pagesId);
    this.entry(head);
  }

  add(vaddr: number, nrPages: number, flags: number): void {
    const pe: number[] = [];
    encodeVarintField(pe, 1, vaddr);
    encodeVarintField(pe, 2, 0);
    encodeVarintField(pe, 4, flags);
    encodeVarintField(pe, 5, nrPages);
    this.entry(pe);
  }

  bytes(): Buffer {
    this.flush();
    return Buffer.concat(this.parts);
  }

  private entry(message: number[]): void {
    const len = message.length;
    this.pending.push(len & 0xff, (len >>> 8) & 0xff, (len >>> 16) & 0xff, len >>> 24, ...message);
    if (this.pending.length >= 64 * 1024) this.flush();
  }

  private flush(): void {
    if (this.pending.length > 0) this.parts.push(Buffer.from(this.pending));
    this.pending = [];
  }
}

/** Pages stored in pages-N.img for this pagemap, in file order. */
export function presentPageCount(pm: Pagemap): number {
  let n = 0;
  for (const e of pm.entries) if (e.flags & PE_PRESENT) n += e.nrPages;
  return n;
}

export interface DumpStats {
  freezingTimeUs: number;
  frozenTimeUs: number;
  memdumpTimeUs: number;
  memwriteTimeUs: number;
  pagesScanned: number;
  pagesWritten: number;
}

/** CRIU's stats-dump (written into the work dir): stats_entry { dump_stats_entry dump = 1 }. */
export function readDumpStats(workDir: string): DumpStats {
  const path = join(workDir, 'stats-dump');
  const [entry] = readEntries(path, STATS_MAGIC);
  if (!entry) throw new CriuImageError(`${path}: no entry`);
  const dump = bytesField(decodeMessage(entry), 1);
  if (!dump) throw new CriuImageError(`${path}: no dump statistics`);
  const f = decodeMessage(dump);
  const n = (k: number) => Number(varintField(f, k) ?? 0n);
  return {
    freezingTimeUs: n(1),
    frozenTimeUs: n(2),
    memdumpTimeUs: n(3),
    memwriteTimeUs: n(4),
    pagesScanned: n(5),
    pagesWritten: n(7),
  };
}
