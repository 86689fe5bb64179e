// ioctl(PAGEMAP_SCAN) on /proc/PID/pagemap (kernel 6.7+): walks a process's page tables
// and returns runs of pages whose categories match, optionally write-protecting the
// matching pages in the same walk (get-and-clear of the "written" state).
import { constants as osConstants } from 'node:os';
import { bufferAddress, ioctlBuffer, lastErrno, SyscallError } from '../sys/libc.js';
import { PAGE_REGION_STRUCT, PAGE_SIZE, PAGEMAP_SCAN, PM_SCAN_ARG_STRUCT, PmScanFlag } from './uffd-abi.js';
import type { Range } from './page-ranges.js';

/**
 * page_region entries per ioctl call. One entry holds a run of pages with equal
 * categories, so a full buffer means a very fragmented range; the walk then continues
 * from walk_end. 4096 entries are 96 KiB: a fragmented 1 GiB range costs a few calls.
 */
export const SCAN_VEC_ENTRIES = 4096;

const { EPERM, ENOTTY } = osConstants.errno;

export interface ScanQuery {
  flags: number;
  /** Categories a page must all have (after category_inverted is applied). */
  categoryMask: number;
  /** Categories of which a page must have at least one (0: no such condition). */
  categoryAnyofMask: number;
  /** Categories that flip meaning before matching. */
  categoryInverted: number;
  /** Categories reported in each region; regions split where these differ. */
  returnMask: number;
}

export interface PageRegion extends Range {
  categories: number;
}

/** PAGEMAP_SCAN with PM_SCAN_CHECK_WPASYNC found a VMA that is not registered for async WP. */
export class WpAsyncCheckError extends Error {
  override name = 'WpAsyncCheckError';
  constructor(readonly range: Range) {
    super(
      `PAGEMAP_SCAN: part of 0x${range.start.toString(16)}-0x${range.end.toString(16)} is not registered for async write protection`,
    );
  }
}

/** The kernel has no PAGEMAP_SCAN (older than 6.7). */
export class PagemapScanUnsupportedError extends Error {
  override name = 'PagemapScanUnsupportedError';
  constructor() {
    super('this kernel has no PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7 or later is needed for write tracking)');
  }
}

/**
 * One scanner per open pagemap file; owns its argument and result buffers (their
 * addresses go into the ioctl argument, so they must outlive every call).
 */
export class PagemapScanner {
  private readonly arg = Buffer.alloc(PM_SCAN_ARG_STRUCT.size);
  private readonly vec = Buffer.alloc(SCAN_VEC_ENTRIES * PAGE_REGION_STRUCT.size);
  private readonly vecAddress = bufferAddress(this.vec);
  /** ioctl calls made, for the caller's statistics. */
  calls = 0;

  constructor(private readonly pagemapFd: number) {}

  /**
   * Scans [range.start, range.end) and calls onRegion for each matching run, in address
   * order. With PM_SCAN_WP_MATCHING, exactly the reported pages are write-protected.
   */
  scan(range: Range, query: ScanQuery, onRegion: (region: PageRegion) => void): void {
    const f = PM_SCAN_ARG_STRUCT.fields;
    let cursor = range.start;
    while (cursor < range.end) {
      const a = this.arg;
      a.fill(0);
      a.writeBigUInt64LE(BigInt(PM_SCAN_ARG_STRUCT.size), f.size);
      a.writeBigUInt64LE(BigInt(query.flags), f.flags);
      a.writeBigUInt64LE(BigInt(cursor), f.start);
      a.writeBigUInt64LE(BigInt(range.end), f.end);
      a.writeBigUInt64LE(this.vecAddress, f.vec);
      a.writeBigUInt64LE(BigInt(SCAN_VEC_ENTRIES), f.vecLen);
      a.writeBigUInt64LE(BigInt(query.categoryInverted), f.categoryInverted);
      a.writeBigUInt64LE(BigInt(query.categoryMask), f.categoryMask);
      a.writeBigUInt64LE(BigInt(query.categoryAnyofMask), f.categoryAnyofMask);
      a.writeBigUInt64LE(BigInt(query.returnMask), f.returnMask);
      this.calls++;
      const n = ioctlBuffer(this.pagemapFd, PAGEMAP_SCAN, a);
      if (n < 0) {
        const e = lastErrno();
        if (e === EPERM && (query.flags & PmScanFlag.CHECK_WPASYNC) !== 0) throw new WpAsyncCheckError({ start: cursor, end: range.end });
        if (e === ENOTTY) throw new PagemapScanUnsupportedError();
        throw new SyscallError('ioctl(PAGEMAP_SCAN)', e);
      }
      if (n > SCAN_VEC_ENTRIES) throw new Error(`PAGEMAP_SCAN returned ${n} regions for a buffer of ${SCAN_VEC_ENTRIES}`);
      for (let i = 0; i < n; i++) {
        const o = i * PAGE_REGION_STRUCT.size;
        const start = Number(this.vec.readBigUInt64LE(o + PAGE_REGION_STRUCT.start));
        const end = Number(this.vec.readBigUInt64LE(o + PAGE_REGION_STRUCT.end));
        const categories = Number(this.vec.readBigUInt64LE(o + PAGE_REGION_STRUCT.categories));
        if (start < cursor || end > range.end || start >= end || start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0) {
          throw new Error(`PAGEMAP_SCAN returned region 0x${start.toString(16)}-0x${end.toString(16)} outside the scanned 0x${cursor.toString(16)}-0x${range.end.toString(16)}`);
        }
        onRegion({ start, end, categories });
      }
      // A buffer with room left means the walk reached the end. (walk_end is then not
      // reliable: the kernel sets it only when a walk stops early, including on the
      // internal flushes of its 512-entry bounce buffer, and leaves that stale value in
      // place when a later pass completes; seen on 6.18.)
      if (n < SCAN_VEC_ENTRIES) return;
      // Full buffer: continue where the walk stopped. If it had in fact completed, the
      // repeated part reports nothing new (WP_MATCHING protected it) or duplicates that
      // the callers' normalize() merges.
      const walkEnd = Number(a.readBigUInt64LE(f.walkEnd));
      if (!(walkEnd > cursor && walkEnd <= range.end)) {
        throw new Error(`PAGEMAP_SCAN filled its buffer but reports walk_end 0x${walkEnd.toString(16)} for a walk from 0x${cursor.toString(16)}`);
      }
      cursor = walkEnd;
    }
  }
}
