// A checkpoint made ready for `criu restore --lazy-pages`: CRIU's small images on staging,
// each pages-N.img as a sparse file holding only the pages CRIU restores itself (those of
// VMAs that cannot be lazy: file-backed, stack, shared memory; criu/include/vma.h,
// vma_entry_can_be_lazy), and a lookup that serves every other page from the store to
// the lazy-pages daemon. The job's memory never lands on staging. The staged pagemaps
// merge neighbouring entries alike (same pages, same order; what CRIU reads is the
// same), so the daemon asks for large runs; `crinc export` still writes CRIU's own.
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PagemapImageBuilder, PE_LAZY, PE_PRESENT, readPagemap } from '../criu/images.js';
import type { PageLookup, RestorePages } from '../criu/page-server.js';
import { CHUNK_ID_BYTES, PAGE_BYTES } from '../store/format.js';
import { type ChunkLocations, type FileManifest, isZeroId, type Repository } from '../store/repository.js';
import type { Codecs } from './codecs.js';
import type { ProgressCallback } from './ingest.js';
import { materializeFile, materializeImages, readChunks } from './materialize.js';

const PAGES_FILE = /^pages-\d+\.img$/;
const PROCESS_PAGEMAP = /^pagemap-(\d+)\.img$/;
const PAGEMAP = /^pagemap-/;

export class LazyPageError extends Error {
  override name = 'LazyPageError';
}

/** One process's lazy pages, in runs of consecutive addresses, and where each is stored. */
interface ProcessPages {
  starts: number[];
  counts: number[];
  /** Each run's first page, as an index in the pages file. */
  firstPage: number[];
  ids: Uint8Array;
  /** Per page of the pages file: 1 when it is served (lazy and not a zero page). */
  served: Uint8Array;
  /** The windows located last, the latest first (requests come mostly in address order). */
  windows: LocatedWindow[];
}

/**
 * Writes the checkpoint's images for a lazy restore into dir; returns the source of the
 * rest. onImagesWritten runs once CRIU's image files are in dir, before the pages'
 * bookkeeping is built (the lazy-pages daemon may start up meanwhile).
 */
export async function stageLazyRestore(
  repo: Repository,
  images: FileManifest[],
  codecs: Codecs,
  dir: string,
  onProgress?: ProgressCallback,
  onImagesWritten?: () => void,
): Promise<RestorePages> {
  const pagesFiles = new Map(images.filter((m) => PAGES_FILE.test(m.path)).map((m) => [m.path, m]));
  await materializeImages(repo, images.filter((m) => !pagesFiles.has(m.path)), codecs, dir);
  onImagesWritten?.();
  const processes = new Map<number, ProcessPages>();
  let totalBytes = 0;
  for (const name of readdirSync(dir).filter((n) => PAGEMAP.test(n)).sort()) {
    const pagemap = readPagemap(join(dir, name));
    const pagesName = `pages-${pagemap.pagesId}.img`;
    const manifest = pagesFiles.get(pagesName);
    if (!manifest) throw new LazyPageError(`the checkpoint has ${name} but not its ${pagesName}`);
    pagesFiles.delete(pagesName);
    const pid = PROCESS_PAGEMAP.exec(name);
    const pageCount = manifest.ids.length / CHUNK_ID_BYTES;
    const own: ProcessPages = { starts: [], counts: [], firstPage: [], ids: manifest.ids, served: new Uint8Array(pageCount), windows: [] };
    // Pages CRIU restores itself, by index in the pages file; lazy ones are left as holes.
    const eager = new Uint8Array(pageCount);
    // CRIU's entries are at most a pipe buffer (1 MiB) long, and the daemon asks for at
    // most an entry at a time: neighbouring entries alike are merged (the same pages
    // in the same order), so it asks for up to 4 MiB at once.
    const merged = new PagemapImageBuilder(pagemap.pagesId);
    let run: { vaddr: number; nrPages: number; flags: number } | undefined;
    const endRun = () => {
      if (run) merged.add(run.vaddr, run.nrPages, run.flags);
      run = undefined;
    };
    let page = 0;
    for (const e of pagemap.entries) {
      const vaddr = Number(e.vaddr);
      if (run && run.flags === e.flags && run.vaddr + run.nrPages * PAGE_BYTES === vaddr && run.nrPages + e.nrPages <= MERGED_ENTRY_PAGES) run.nrPages += e.nrPages;
      else {
        endRun();
        run = { vaddr, nrPages: e.nrPages, flags: e.flags };
      }
      if (!(e.flags & PE_PRESENT)) continue;
      const lazy = pid !== null && (e.flags & PE_LAZY) !== 0;
      if (!lazy) {
        eager.fill(1, page, page + e.nrPages);
      } else {
        const last = own.starts.length - 1;
        if (last >= 0 && own.starts[last]! + own.counts[last]! * PAGE_BYTES === vaddr && own.firstPage[last]! + own.counts[last]! === page) {
          own.counts[last]! += e.nrPages;
        } else {
          own.starts.push(vaddr);
          own.counts.push(e.nrPages);
          own.firstPage.push(page);
        }
        for (let p = page; p < page + e.nrPages; p++) if (!isZeroId(manifest.ids, p)) own.served[p] = 1;
        totalBytes += e.nrPages * PAGE_BYTES;
      }
      page += e.nrPages;
    }
    endRun();
    if (page !== pageCount) throw new LazyPageError(`${name} lists ${page} present pages, ${pagesName} holds ${pageCount}`);
    await materializeFile(repo, manifest, codecs, join(dir, pagesName), undefined, (block) => eager[block] === 1);
    if (!pid) continue;
    writeFileSync(join(dir, name), merged.bytes(), { mode: 0o600 });
    processes.set(Number(pid[1]), own);
  }
  if (pagesFiles.size > 0) throw new LazyPageError(`the checkpoint has ${[...pagesFiles.keys()].join(', ')} without a pagemap`);

  return new LazyPageSource(repo, codecs, processes, totalBytes, onProgress);
}

/** A range read from the store ahead of the daemon's request for it. */
interface ReadAhead {
  pid: number;
  vaddr: number;
  buffer: Buffer;
  /** Pages read, from vaddr on; rejects if they could not be (the request then reads them itself). */
  pages: Promise<number>;
}

/**
 * Serves the daemon's requests from the store. Its background transfer asks for one range
 * at a time per process, the next after the last in address order, and copies a reply into
 * the job before it asks again: while it copies, the range after the one just served is
 * read ahead, so the store's reads and the daemon's copies overlap. Replies go out of a
 * few buffers, allocated once (a fresh 4 MiB buffer per reply cost a page fault per page).
 */
class LazyPageSource implements RestorePages {
  private readonly free: Buffer[] = [];
  private readonly waiting: ((b: Buffer) => void)[] = [];
  private allocated = 0;
  private ahead: ReadAhead | undefined;
  private sentBytes = 0;

  constructor(
    private readonly repo: Repository,
    private readonly codecs: Codecs,
    private readonly processes: Map<number, ProcessPages>,
    private readonly totalBytes: number,
    private readonly onProgress: ProgressCallback | undefined,
  ) {}

  /** Called by the server one request at a time: reads never overlap (readChunks runs one at a time). */
  readonly lookup: PageLookup = async (pid, vaddr, nrPages) => {
    const ahead = this.ahead;
    this.ahead = undefined;
    let buffer: Buffer | undefined;
    let n = 0;
    if (ahead) {
      const read = await ahead.pages.catch(() => 0);
      if (read > 0 && ahead.pid === pid && ahead.vaddr === vaddr) {
        buffer = ahead.buffer;
        n = Math.min(nrPages, read);
      } else {
        this.give(ahead.buffer);
      }
    }
    if (!buffer) {
      buffer = await this.take();
      try {
        n = await this.read(pid, vaddr, nrPages, buffer);
      } catch (e) {
        this.give(buffer);
        throw e;
      }
    }
    this.readAhead(pid, vaddr + n * PAGE_BYTES);
    this.sentBytes += n * PAGE_BYTES;
    this.onProgress?.(this.sentBytes, this.totalBytes);
    const replied = buffer;
    return { bytes: replied.subarray(0, n * PAGE_BYTES), sent: () => this.give(replied) };
  };

  async idle(): Promise<void> {
    await this.ahead?.pages.catch(() => undefined);
  }

  /** Starts reading the lazy range at or after vaddr in pid's address order, if a buffer is free. */
  private readAhead(pid: number, vaddr: number): void {
    const p = this.processes.get(pid)!;
    let e = entryAt(p.starts, vaddr);
    if (e < 0 || vaddr >= p.starts[e]! + p.counts[e]! * PAGE_BYTES) {
      e += 1;
      if (e >= p.starts.length) return;
      vaddr = p.starts[e]!;
    }
    const buffer = this.spare();
    if (!buffer) return;
    // After the reply has gone out: locating a new window holds up the event loop.
    const pages = new Promise((resolve) => setImmediate(resolve)).then(() => this.read(pid, vaddr, REPLY_PAGES, buffer));
    pages.catch(() => undefined); // a range that cannot be read is read again, and reported, when asked for
    this.ahead = { pid, vaddr, buffer, pages };
  }

  /** Reads up to nrPages lazy pages of pid from vaddr into buffer; returns how many. */
  private async read(pid: number, vaddr: number, nrPages: number, buffer: Buffer): Promise<number> {
    const p = this.processes.get(pid);
    if (!p) throw new LazyPageError(`criu lazy-pages asked for pages of process ${pid}, which the checkpoint does not have`);
    const e = entryAt(p.starts, vaddr);
    const offset = e < 0 ? -1 : (vaddr - p.starts[e]!) / PAGE_BYTES;
    if (e < 0 || offset >= p.counts[e]! || !Number.isInteger(offset)) {
      throw new LazyPageError(`criu lazy-pages asked for page 0x${vaddr.toString(16)} of process ${pid}, which the checkpoint does not hold as lazy`);
    }
    const first = p.firstPage[e]! + offset;
    const window = locatedWindow(this.repo, p, first - (first % LOCATE_WINDOW_PAGES));
    // Fewer pages than asked (up to the run's, the window's or the buffer's end) is allowed: the daemon asks again.
    const n = Math.min(nrPages, REPLY_PAGES, p.counts[e]! - offset, window.first + LOCATE_WINDOW_PAGES - first);
    const wanted: number[] = [];
    for (let i = 0; i < n; i++) {
      if (p.served[first + i] === 1) wanted.push(i);
      else buffer.fill(0, i * PAGE_BYTES, (i + 1) * PAGE_BYTES);
    }
    if (wanted.length === 0) return n;
    const ids = new Uint8Array(wanted.length * CHUNK_ID_BYTES);
    const located: ChunkLocations = {
      packs: window.where.packs,
      packIndex: new Int32Array(wanted.length),
      offset: new Uint32Array(wanted.length),
      storedLength: new Uint32Array(wanted.length),
      rawLength: new Uint32Array(wanted.length),
      compression: new Uint8Array(wanted.length),
    };
    wanted.forEach((i, k) => {
      const page = first + i;
      ids.set(p.ids.subarray(page * CHUNK_ID_BYTES, (page + 1) * CHUNK_ID_BYTES), k * CHUNK_ID_BYTES);
      const w = window.slot[page - window.first]!;
      located.packIndex[k] = window.where.packIndex[w]!;
      located.offset[k] = window.where.offset[w]!;
      located.storedLength[k] = window.where.storedLength[w]!;
      located.rawLength[k] = window.where.rawLength[w]!;
      located.compression[k] = window.where.compression[w]!;
    });
    await readChunks(this.repo, ids, this.codecs, (k, raw) => {
      if (raw.length !== PAGE_BYTES) throw new LazyPageError(`page chunk of ${raw.length} bytes in process ${pid}'s pages`);
      buffer.set(raw, wanted[k]! * PAGE_BYTES);
    }, undefined, located);
    return n;
  }

  /** A free reply buffer, or a new one while fewer than REPLY_BUFFERS exist. */
  private spare(): Buffer | undefined {
    const b = this.free.pop();
    if (b || this.allocated === REPLY_BUFFERS) return b;
    this.allocated += 1;
    return Buffer.alloc(REPLY_PAGES * PAGE_BYTES);
  }

  private take(): Promise<Buffer> {
    const b = this.spare();
    return b ? Promise.resolve(b) : new Promise((resolve) => this.waiting.push(resolve));
  }

  private give(b: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(b);
    else this.free.push(b);
  }
}

/**
 * Merged entries stay within the daemon's largest request (uffd.c, MAX_XFER_LEN, 4 MiB):
 * it sizes a buffer by its longest entry in an int, which a 2 GiB entry overflows (it
 * crashed here).
 */
const MERGED_ENTRY_PAGES = (4 * 1024 * 1024) / PAGE_BYTES;

/**
 * Pages are located LOCATE_WINDOW_PAGES (16 MiB) at a time: one store query per window,
 * not per request, kept short because it holds up the event loop (a 1 GiB window took
 * 0.8-1.9 s here, during which the server answered nothing and crinc did not see CRIU's
 * restore end).
 */
const LOCATE_WINDOW_PAGES = 4096;
/** Located windows kept per process: the background transfer's and the job's own faults'. */
const LOCATED_WINDOWS = 4;
/** The longest reply, in pages (the daemon asks for at most MERGED_ENTRY_PAGES at once). */
const REPLY_PAGES = MERGED_ENTRY_PAGES;
/** Reply buffers: one filled for a request, one read ahead, the others being written out. */
const REPLY_BUFFERS = 4;

interface LocatedWindow {
  /** The window's first page (index in the pages file). */
  first: number;
  /** Per page of the window: its index in where, or -1 (not served). */
  slot: Int32Array;
  where: ChunkLocations;
}

/** The window starting at page first, from the process's recent ones or located now. */
function locatedWindow(repo: Repository, p: ProcessPages, first: number): LocatedWindow {
  const cached = p.windows.findIndex((w) => w.first === first);
  if (cached >= 0) {
    const [w] = p.windows.splice(cached, 1);
    p.windows.unshift(w!);
    return w!;
  }
  const end = Math.min(first + LOCATE_WINDOW_PAGES, p.served.length);
  const slot = new Int32Array(end - first).fill(-1);
  let count = 0;
  for (let page = first; page < end; page++) if (p.served[page] === 1) slot[page - first] = count++;
  const ids = new Uint8Array(count * CHUNK_ID_BYTES);
  for (let page = first; page < end; page++) {
    const k = slot[page - first]!;
    if (k >= 0) ids.set(p.ids.subarray(page * CHUNK_ID_BYTES, (page + 1) * CHUNK_ID_BYTES), k * CHUNK_ID_BYTES);
  }
  const w = { first, slot, where: repo.locateChunks(ids) };
  p.windows.unshift(w);
  p.windows.length = Math.min(p.windows.length, LOCATED_WINDOWS);
  return w;
}

/** The entry whose start is the greatest at or below vaddr, or -1 (starts ascending). */
function entryAt(starts: number[], vaddr: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (starts[mid]! <= vaddr) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}
