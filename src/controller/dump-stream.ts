// The pages of a dump as CRIU streams them, turned into what a local dump would have left
// in its image directory: pagemap-*.img files (small, written to staging) and, for each
// pages-N.img, the id of every page (the pages themselves go straight into the ingest).
// The first open comes once CRIU has frozen the whole tree (criu/cr-dump.c: collect_pstree
// before any task's pages): crinc's work inside the freeze (the tracking scan, the copy of
// the job's files) runs there, before the first page is read.
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { PagemapImageBuilder, PE_PRESENT } from '../criu/images.js';
import { type DumpStreamSink, type PageSource, PS_TYPE_PID } from '../criu/page-server.js';
import type { CleanPages, Ingest, PageStream, StreamedPagesFile } from './ingest.js';

/** Image files are created as CRIU creates them (criu/include/image.h, CR_FD_PERM). */
const IMAGE_FILE_MODE = 0o600;

export class DumpStream implements DumpStreamSink {
  readonly pagesFiles: StreamedPagesFile[] = [];
  private clean: CleanPages | undefined;
  private current: { builder: PagemapImageBuilder; path: string; stream: PageStream; tee: number | null } | undefined;
  private nextPagesId = 1;

  /**
   * @param atFreeze crinc's work inside the freeze; gives the clean pages. Called once,
   *   at the first open.
   * @param signal cancels the dump at the next open or at the close: CRIU then fails it
   *   and thaws the job.
   * @param teeDir debug aid: also write each pages-N.img there as it arrives.
   */
  constructor(
    private readonly ingest: Ingest,
    private readonly imagesDir: string,
    private readonly atFreeze: () => CleanPages,
    private readonly signal?: AbortSignal,
    private readonly teeDir?: string,
  ) {}

  /** Whether CRIU opened any pagemap (the tree was frozen then). */
  get opened(): boolean {
    return this.clean !== undefined;
  }

  open(type: number, id: number): void {
    this.signal?.throwIfAborted();
    this.clean ??= this.atFreeze();
    this.end();
    // Numbered as a local dump numbers them (criu/image.c: page_ids from 1, in open order).
    const pagesId = this.nextPagesId++;
    const name = type === PS_TYPE_PID ? `pagemap-${id}.img` : `pagemap-shmem-${id}.img`;
    const pagesName = `pages-${pagesId}.img`;
    this.current = {
      builder: new PagemapImageBuilder(pagesId),
      path: join(this.imagesDir, name),
      stream: this.ingest.beginPages(pagesName, type === PS_TYPE_PID ? id : null, this.clean),
      tee: this.teeDir ? openSync(join(this.teeDir, pagesName), 'w', IMAGE_FILE_MODE) : null,
    };
  }

  async pages(vaddr: number, nrPages: number, flags: number, source: PageSource): Promise<void> {
    const c = this.current!;
    c.builder.add(vaddr, nrPages, flags);
    if (!(flags & PE_PRESENT)) return;
    await this.ingest.addPages(c.stream, vaddr, nrPages, c.tee === null ? source : teeSource(source, c.tee));
  }

  close(): void {
    this.signal?.throwIfAborted();
    this.end();
  }

  private end(): void {
    const c = this.current;
    if (!c) return;
    this.current = undefined;
    if (c.tee !== null) closeSync(c.tee);
    writeFileSync(c.path, c.builder.bytes(), { mode: IMAGE_FILE_MODE });
    this.pagesFiles.push(this.ingest.endPages(c.stream));
  }
}

/** Debug aid (CRINC_KEEP_IMAGES): every page, clean ones included, also written to fd. */
function teeSource(source: PageSource, fd: number): PageSource {
  return {
    read(into) {
      source.read(into);
      writeAllSync(fd, into);
    },
    skip(bytes) {
      const buf = Buffer.allocUnsafe(bytes);
      source.read(buf);
      writeAllSync(fd, buf);
    },
  };
}

function writeAllSync(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done);
}
