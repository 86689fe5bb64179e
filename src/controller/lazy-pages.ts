// A checkpoint made ready for `criu restore --lazy-pages`: CRIU's small images on staging,
// each pages-N.img as a sparse file holding only the pages CRIU restores itself (those of
// VMAs that cannot be lazy: file-backed, stack, shared memory; criu/include/vma.h,
// vma_entry_can_be_lazy), and a lookup that serves every other page from the store to
// the lazy-pages daemon. The job's memory never lands on staging.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { PE_LAZY, PE_PRESENT, readPagemap } from '../criu/images.js';
import type { PageLookup } from '../criu/page-server.js';
import { CHUNK_ID_BYTES, PAGE_BYTES } from '../store/format.js';
import { type FileManifest, isZeroId, type Repository } from '../store/repository.js';
import type { Codecs } from './codecs.js';
import type { ProgressCallback } from './ingest.js';
import { materializeFile, materializeImages, readChunks } from './materialize.js';

const PAGES_FILE = /^pages-\d+\.img$/;
const PROCESS_PAGEMAP = /^pagemap-(\d+)\.img$/;
const PAGEMAP = /^pagemap-/;

export class LazyPageError extends Error {
  override name = 'LazyPageError';
}

/** One process's present pages, by pagemap entry: where each entry's pages sit in its pages file. */
interface ProcessPages {
  starts: number[];
  counts: number[];
  firstPage: number[];
  ids: Uint8Array;
}

/** Writes the checkpoint's images for a lazy restore into dir; returns the lookup for the rest. */
export async function stageLazyRestore(repo: Repository, images: FileManifest[], codecs: Codecs, dir: string, onProgress?: ProgressCallback): Promise<PageLookup> {
  const pagesFiles = new Map(images.filter((m) => PAGES_FILE.test(m.path)).map((m) => [m.path, m]));
  await materializeImages(repo, images.filter((m) => !pagesFiles.has(m.path)), codecs, dir);
  const processes = new Map<number, ProcessPages>();
  let totalBytes = 0;
  for (const name of readdirSync(dir).filter((n) => PAGEMAP.test(n)).sort()) {
    const pagemap = readPagemap(join(dir, name));
    const pagesName = `pages-${pagemap.pagesId}.img`;
    const manifest = pagesFiles.get(pagesName);
    if (!manifest) throw new LazyPageError(`the checkpoint has ${name} but not its ${pagesName}`);
    pagesFiles.delete(pagesName);
    const pid = PROCESS_PAGEMAP.exec(name);
    const own: ProcessPages = { starts: [], counts: [], firstPage: [], ids: manifest.ids };
    // Pages CRIU restores itself, by index in the pages file; lazy ones are left as holes.
    const eager = new Uint8Array(manifest.ids.length / CHUNK_ID_BYTES);
    let page = 0;
    for (const e of pagemap.entries) {
      if (!(e.flags & PE_PRESENT)) continue;
      const lazy = pid !== null && (e.flags & PE_LAZY) !== 0;
      if (lazy) {
        own.starts.push(Number(e.vaddr));
        own.counts.push(e.nrPages);
        own.firstPage.push(page);
        totalBytes += e.nrPages * PAGE_BYTES;
      } else {
        eager.fill(1, page, page + e.nrPages);
      }
      page += e.nrPages;
    }
    if (page !== eager.length) throw new LazyPageError(`${name} lists ${page} present pages, ${pagesName} holds ${eager.length}`);
    await materializeFile(repo, manifest, codecs, join(dir, pagesName), undefined, (block) => eager[block] === 1);
    if (pid) processes.set(Number(pid[1]), own);
  }
  if (pagesFiles.size > 0) throw new LazyPageError(`the checkpoint has ${[...pagesFiles.keys()].join(', ')} without a pagemap`);

  let sentBytes = 0;
  return async (pid, vaddr, nrPages) => {
    const p = processes.get(pid);
    if (!p) throw new LazyPageError(`criu lazy-pages asked for pages of process ${pid}, which the checkpoint does not have`);
    const e = entryAt(p.starts, vaddr);
    const offset = e < 0 ? -1 : (vaddr - p.starts[e]!) / PAGE_BYTES;
    if (e < 0 || offset >= p.counts[e]! || !Number.isInteger(offset)) {
      throw new LazyPageError(`criu lazy-pages asked for page 0x${vaddr.toString(16)} of process ${pid}, which the checkpoint does not hold as lazy`);
    }
    // Fewer pages than asked, up to the entry's end, is allowed: the daemon asks again.
    const n = Math.min(nrPages, p.counts[e]! - offset);
    const first = p.firstPage[e]! + offset;
    const out = Buffer.alloc(n * PAGE_BYTES);
    const wanted: number[] = [];
    for (let i = 0; i < n; i++) if (!isZeroId(p.ids, first + i)) wanted.push(i);
    const ids = new Uint8Array(wanted.length * CHUNK_ID_BYTES);
    wanted.forEach((i, k) => ids.set(p.ids.subarray((first + i) * CHUNK_ID_BYTES, (first + i + 1) * CHUNK_ID_BYTES), k * CHUNK_ID_BYTES));
    if (wanted.length > 0) {
      await readChunks(repo, ids, codecs, (k, raw) => {
        if (raw.length !== PAGE_BYTES) throw new LazyPageError(`page chunk of ${raw.length} bytes in process ${pid}'s pages`);
        out.set(raw, wanted[k]! * PAGE_BYTES);
      });
    }
    sentBytes += out.length;
    onProgress?.(sentBytes, totalBytes);
    return out;
  };
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
