// The bucket lock of an S3 store (docs/FORMAT.md, "The bucket lock"), on restic's model:
// each process that writes or reads packs, or deletes objects, keeps a lock object under
// locks/ while it works, refreshed periodically; GC's is exclusive. A lock object whose
// holder is provably gone (same host, boot and PID namespace, process gone) or that was
// not refreshed for BUCKET_LOCK_STALE_MS counts for nothing.
import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { procStat } from '../sys/proc.js';
import { BucketLockedError, BucketLockLostError } from './errors.js';

/** A holder writes its lock object again this often. */
export const BUCKET_LOCK_REFRESH_MS = 5 * 60_000;
/** A lock object not written for this long is stale, whoever holds it. */
export const BUCKET_LOCK_STALE_MS = 30 * 60_000;
/** A holder trusts its lock only while its last write is younger than this: a margin of one refresh before others may take it for stale. */
const BUCKET_LOCK_TRUSTED_MS = BUCKET_LOCK_STALE_MS - BUCKET_LOCK_REFRESH_MS;
/** While waiting for a lock, the locks are listed again this often. */
const BUCKET_LOCK_POLL_MS = 2_000;
/** An exclusive locker waits this long for shared holders to finish, then gives up. */
export const BUCKET_LOCK_EXCLUSIVE_WAIT_MS = 10 * 60_000;
export const BUCKET_LOCKS_PREFIX = 'locks/';
const LOCK_FORMAT = 1;
const DEAD_HOLDER = ` (the lock of a crinc that died stops counting at once on its own node, after ${BUCKET_LOCK_STALE_MS / 60_000} minutes on others)`;

export type BucketLockKind = 'shared' | 'exclusive';

/** The object store operations the lock needs (an S3Backend). */
export interface LockBucket {
  readonly location: string;
  putObject(name: string, body: Buffer): Promise<void>;
  getObject(name: string): Promise<Buffer | undefined>;
  deleteObject(name: string): Promise<void>;
  listObjects(prefix: string): Promise<{ key: string; size: number; lastModified: Date }[]>;
}

/** The content of a lock object. */
interface LockRecord {
  format: number;
  kind: BucketLockKind;
  purpose: string;
  host: string;
  bootId: string;
  pidNamespace: string;
  pid: number;
  pidStart: number;
  createdAt: string;
}

/** Another process's lock, as found in the listing. */
interface FoundLock {
  key: string;
  /** undefined: the object is not a lock record (counts as exclusive until stale). */
  record: LockRecord | undefined;
  lastModified: Date;
}

/** A hold on the bucket lock; release() deletes the lock object once nothing in this process needs it. */
export interface BucketLockHold {
  readonly kind: BucketLockKind;
  release(): void;
}

/** This process, as lock records name it. */
let self: Pick<LockRecord, 'host' | 'bootId' | 'pidNamespace' | 'pid' | 'pidStart'> | undefined;

function whoAmI(): NonNullable<typeof self> {
  self ??= {
    host: hostname(),
    bootId: readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
    pidNamespace: readlinkSync('/proc/self/ns/pid'),
    pid: process.pid,
    pidStart: procStat(process.pid)!.startTicks,
  };
  return self;
}

/** The lock objects of one store, as this process takes and holds them. At most one object per process: a second shared hold reuses it. */
export class BucketLocks {
  private own: { key: string; kind: BucketLockKind; body: Buffer; lastWrite: number; holds: number; timer: NodeJS.Timeout } | undefined;
  /** Deletions of released lock objects still in flight (the client must not be destroyed under them). */
  private readonly deleting = new Set<Promise<void>>();
  /** Acquisitions run one at a time (a process writes one lock object at most). */
  private acquiring: Promise<unknown> = Promise.resolve();
  /** Called when the own lock is released. */
  private readonly releaseWaiters: (() => void)[] = [];

  constructor(
    private readonly bucket: LockBucket,
    private readonly onWarning: (message: string) => void,
  ) {}

  /** The kind held now, if any. */
  get held(): BucketLockKind | undefined {
    return this.own?.kind;
  }

  /**
   * Shared: waits while a live exclusive lock exists (GC). Exclusive: fails at once if
   * another exclusive lock is live, waits up to BUCKET_LOCK_EXCLUSIVE_WAIT_MS for shared
   * holders, new ones waiting behind it meanwhile.
   */
  async acquire(kind: BucketLockKind, purpose: string, options: { waitForExclusive: boolean } = { waitForExclusive: true }): Promise<BucketLockHold> {
    const acquired = this.acquiring.then(() => this.acquireInTurn(kind, purpose, options.waitForExclusive));
    this.acquiring = acquired.catch(() => undefined);
    return acquired;
  }

  private async acquireInTurn(kind: BucketLockKind, purpose: string, waitForExclusive: boolean): Promise<BucketLockHold> {
    // Within a process as between processes: shared holds share the one lock object; any
    // other request waits for its release (a daemon's checkpoint while its GC runs).
    while (this.own && !(kind === 'shared' && this.own.kind === 'shared')) await new Promise<void>((resolve) => this.releaseWaiters.push(resolve));
    if (this.own) return this.hold();
    return kind === 'shared' ? this.acquireShared(purpose, waitForExclusive) : this.acquireExclusive(purpose);
  }

  private async acquireShared(purpose: string, waitForExclusive: boolean): Promise<BucketLockHold> {
    for (;;) {
      // Wait without a lock object of our own, so that GC does not wait for us meanwhile.
      for (;;) {
        const exclusive = (await this.liveLocks()).filter(isExclusive);
        if (exclusive.length === 0) break;
        if (!waitForExclusive) throw new BucketLockedError(this.bucket.location, purpose, exclusive.map(describe), `Wait for it to finish, then try again${DEAD_HOLDER}`);
        await sleep(BUCKET_LOCK_POLL_MS);
      }
      await this.create('shared', purpose);
      if (!(await this.liveLocks()).some(isExclusive)) return this.hold();
      await this.dropOwn();
    }
  }

  private async acquireExclusive(purpose: string): Promise<BucketLockHold> {
    await this.create('exclusive', purpose);
    const deadline = Date.now() + BUCKET_LOCK_EXCLUSIVE_WAIT_MS;
    for (;;) {
      const others = await this.liveLocks();
      const exclusive = others.filter(isExclusive);
      if (exclusive.length > 0) {
        await this.dropOwn();
        throw new BucketLockedError(this.bucket.location, purpose, exclusive.map(describe), `Wait for it to finish, then try again${DEAD_HOLDER}`);
      }
      if (others.length === 0) return this.hold();
      if (Date.now() > deadline) {
        await this.dropOwn();
        throw new BucketLockedError(
          this.bucket.location, purpose, others.map(describe),
          `They did not finish in ${BUCKET_LOCK_EXCLUSIVE_WAIT_MS / 60_000} minutes: try again when they are done${DEAD_HOLDER}`,
        );
      }
      await sleep(BUCKET_LOCK_POLL_MS);
    }
  }

  /**
   * Before writing what only a lock holder may write (a commit point, GC's rewrites and
   * deletions): the own lock must be younger than BUCKET_LOCK_TRUSTED_MS and still in the
   * bucket, else another node may have taken it for stale and collected garbage.
   */
  async assertFresh(): Promise<void> {
    const own = this.own;
    if (!own) throw new Error('the bucket lock is not held');
    const age = Date.now() - own.lastWrite;
    if (age > BUCKET_LOCK_TRUSTED_MS || !(await this.bucket.getObject(own.key))) {
      throw new BucketLockLostError(this.bucket.location, own.key, age);
    }
  }

  /** Asserts that a lock is held (packs are uploaded only under one). */
  assertHeld(): void {
    if (!this.own) throw new Error('the bucket lock is not held');
  }

  /** Resolves once released lock objects are deleted. */
  async settled(): Promise<void> {
    await Promise.all([...this.deleting]);
  }

  /** Drops the own lock, held or not (the store is closing). */
  releaseAll(): void {
    if (this.own) this.startDelete();
  }

  private async create(kind: BucketLockKind, purpose: string): Promise<void> {
    const record: LockRecord = { format: LOCK_FORMAT, kind, purpose, ...whoAmI(), createdAt: new Date().toISOString() };
    const key = `${BUCKET_LOCKS_PREFIX}${randomBytes(16).toString('hex')}`;
    const body = Buffer.from(JSON.stringify(record));
    const lastWrite = Date.now();
    await this.bucket.putObject(key, body);
    const timer = setInterval(() => void this.refresh(), BUCKET_LOCK_REFRESH_MS);
    timer.unref();
    this.own = { key, kind, body, lastWrite, holds: 0, timer };
  }

  private async refresh(): Promise<void> {
    const own = this.own;
    if (!own) return;
    const started = Date.now();
    try {
      await this.bucket.putObject(own.key, own.body);
      own.lastWrite = started;
    } catch (e) {
      // assertFresh stops the holder before it relies on a lock this failure let go stale.
      this.onWarning(`could not refresh the lock ${own.key} in ${this.bucket.location}: ${(e as Error).message}`);
    }
  }

  private hold(): BucketLockHold {
    const own = this.own!;
    own.holds++;
    let released = false;
    return {
      kind: own.kind,
      release: () => {
        if (released) return;
        released = true;
        if (--own.holds === 0 && this.own === own) this.startDelete();
      },
    };
  }

  private async dropOwn(): Promise<void> {
    this.startDelete();
    await this.settled();
  }

  private startDelete(): void {
    const own = this.own!;
    this.own = undefined;
    clearInterval(own.timer);
    for (const resolve of this.releaseWaiters.splice(0)) resolve();
    const done = this.bucket.deleteObject(own.key).catch((e: Error) => {
      this.onWarning(`could not delete the lock ${own.key} in ${this.bucket.location} (${e.message}): it counts until it is stale (${BUCKET_LOCK_STALE_MS / 60_000} minutes)`);
    });
    this.deleting.add(done);
    void done.finally(() => this.deleting.delete(done));
  }

  /** Every other lock that counts; stale ones found are deleted (they count for nothing). */
  private async liveLocks(): Promise<FoundLock[]> {
    const live: FoundLock[] = [];
    for (const o of await this.bucket.listObjects(BUCKET_LOCKS_PREFIX)) {
      if (o.key === this.own?.key) continue;
      let record: LockRecord | undefined;
      let stale = Date.now() - o.lastModified.getTime() > BUCKET_LOCK_STALE_MS;
      if (!stale) {
        const body = await this.bucket.getObject(o.key);
        if (!body) continue; // released meanwhile
        record = parseLock(body);
        stale = record !== undefined && holderIsGone(record);
      }
      if (stale) {
        await this.bucket.deleteObject(o.key);
        continue;
      }
      // An object under locks/ that is no lock record counts as an exclusive lock of someone unknown.
      live.push({ key: o.key, record, lastModified: o.lastModified });
    }
    return live;
  }
}

function isExclusive(l: FoundLock): boolean {
  return l.record === undefined || l.record.kind === 'exclusive';
}

function parseLock(body: Buffer): LockRecord | undefined {
  try {
    const r = JSON.parse(body.toString('utf8')) as LockRecord;
    if (r.format !== LOCK_FORMAT || (r.kind !== 'shared' && r.kind !== 'exclusive') || !Number.isInteger(r.pid) || !Number.isInteger(r.pidStart)) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

/** A holder on this boot of this host, in this PID namespace, whose process is gone (killed). */
function holderIsGone(r: LockRecord): boolean {
  const me = whoAmI();
  if (r.bootId !== me.bootId || r.pidNamespace !== me.pidNamespace) return false;
  const stat = procStat(r.pid);
  return !stat || stat.startTicks !== r.pidStart || stat.state === 'Z' || stat.state === 'X';
}

function describe(l: FoundLock): string {
  const age = `written ${Math.round((Date.now() - l.lastModified.getTime()) / 1000)} s ago`;
  if (!l.record) return `${l.key} (not a crinc lock; ${age})`;
  const r = l.record;
  return `${r.kind} lock for ${r.purpose} by crinc pid ${r.pid} on ${r.host} since ${r.createdAt} (${l.key}, ${age})`;
}
