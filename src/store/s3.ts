// A store in S3-compatible object storage (docs/FORMAT.md, "Stores on S3"): packs, their
// chunk tables, one object per checkpoint (the commit point) and the store's identity
// with its secret, under s3://bucket/prefix. The SQLite index is a local cache of these
// objects, brought in line with them on every open and rebuilt when missing, so a job
// checkpointed on one node restores on another.
import {
  AbortMultipartUploadCommand,
  ListMultipartUploadsCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SECRET_BYTES } from '../codec/limits.js';
import type { CommitRecord, StoreBackend } from './backend.js';
import { type BucketLockHold, BucketLocks, type LockBucket } from './bucket-lock.js';
import { PackMissingError, S3AccessError, S3StoreError, StoreNotFoundError } from './errors.js';
import {
  CHECKPOINT_KEY,
  CHECKPOINTS_PREFIX,
  checkpointKey,
  decodeCheckpoint,
  decodePackIndex,
  decodeStoreObject,
  encodeCheckpoint,
  encodeStoreObject,
  PACK_INDEX_SUFFIX,
  PACK_KEY,
  PACK_SUFFIX,
  packKey,
  PACKS_PREFIX,
  STORE_OBJECT,
  type StoreIdentity,
} from './objects.js';
import { type PackWriter, packPath, packTablePath } from './pack.js';
import { type RemoteCheckpoint, type RemotePack, Repository } from './repository.js';

export const S3_URL_SCHEME = 's3://';
/** The local index of an S3 store lives in <this>/<hash of the URL>/ unless --cache says where. */
export const DEFAULT_CACHE_ROOT = '/var/cache/crinc';
/** Packs larger than this are uploaded in parts of this size (S3's minimum part is 5 MiB). */
export const S3_PART_BYTES = 8 * 1024 * 1024;
/** Parts (or whole small packs) uploaded at once, over all packs of a commit: bounds memory to this × S3_PART_BYTES. */
export const S3_UPLOAD_CONCURRENCY = 4;
/** Small objects (chunk tables, checkpoint objects) fetched at once while the index catches up. */
const S3_FETCH_CONCURRENCY = 8;
/** A checkpoint id taken by another node meanwhile is skipped; this many in a row is an error. */
const S3_COMMIT_ATTEMPTS = 8;
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

// The SDK's notice that releases from 2027 on want Node 22 concerns crinc's pinned version
// (see package.json), not its users: it would only clutter every command's stderr.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3Location {
  bucket: string;
  /** '' or a key prefix ending in '/'. */
  prefix: string;
  /** s3://bucket/prefix, normalized. */
  url: string;
}

export function isS3Url(spec: string): boolean {
  return spec.startsWith(S3_URL_SCHEME);
}

export function parseS3Url(spec: string): S3Location {
  const rest = spec.slice(S3_URL_SCHEME.length).replace(/\/+$/, '');
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash + 1);
  if (!BUCKET_NAME.test(bucket)) throw new S3StoreError(`"${spec}": "${bucket}" is not a bucket name; use s3://BUCKET/PREFIX (bucket: 3–63 lowercase letters, digits, '.', '-')`);
  if (path?.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new S3StoreError(`"${spec}": the prefix "${path}" has an empty, "." or ".." part; use s3://BUCKET/PREFIX`);
  }
  return { bucket, prefix: path ? `${path}/` : '', url: `${S3_URL_SCHEME}${bucket}${path ? `/${path}` : ''}` };
}

/** Where the local index of an S3 store goes when --cache does not say. */
export function defaultCacheDir(location: S3Location): string {
  return join(DEFAULT_CACHE_ROOT, createHash('sha256').update(location.url).digest('hex').slice(0, 16));
}

export interface OpenS3Options {
  create: boolean;
  /** The local index's directory (default: defaultCacheDir). */
  cacheDir?: string;
  /** Told about objects of the bucket the index leaves out (a checkpoint whose pack is missing). */
  onWarning: (message: string) => void;
}

/** Opens (or, with create, makes) the store at an s3:// URL, with its index brought up to date. */
export async function openS3Store(spec: string, options: OpenS3Options): Promise<Repository> {
  const location = parseS3Url(spec);
  const backend = new S3Backend(location, options.cacheDir ?? defaultCacheDir(location), options.onWarning);
  let repo: Repository | undefined;
  try {
    const identity = await backend.identity(options.create);
    // The cache is made whenever it is missing: it holds nothing the bucket does not.
    repo = Repository.open(backend.cacheDir, { create: true, backend, identity });
    for (const warning of (await backend.catchUp(repo)).warnings) options.onWarning(warning);
    return repo;
  } catch (e) {
    if (repo) repo.close();
    else backend.close();
    throw e;
  }
}

interface ListedObject {
  key: string;
  size: number;
  lastModified: Date;
}

/** The pack objects in the bucket: sizes of the .pack objects, names of those with a .idx. */
export interface PackListing {
  packBytes: Map<string, number>;
  tables: Set<string>;
}

/** What a catch-up did not take in, for the person and for GC. */
export interface CatchUpResult {
  warnings: string[];
  /** Checkpoint objects left out because a pack they name is not in the bucket. */
  leftOut: RemoteCheckpoint[];
}

export class S3Backend implements StoreBackend, LockBucket {
  readonly remote = true;
  readonly location: string;
  private readonly client: S3Client;
  /** This process's lock in the bucket (docs/FORMAT.md, "The bucket lock"). */
  readonly locks: BucketLocks;

  constructor(
    private readonly where: S3Location,
    readonly cacheDir: string,
    private readonly onWarning: (message: string) => void,
  ) {
    this.location = where.url;
    this.locks = new BucketLocks(this, onWarning);
    // Endpoint, region and credentials: the SDK's usual chain (AWS_ENDPOINT_URL, AWS_REGION,
    // AWS_ACCESS_KEY_ID…, ~/.aws/config and credentials). Path-style requests work on every
    // S3-compatible service without wildcard DNS. radosgw rejects the newer default checksums.
    this.client = new S3Client({
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  close(): void {
    this.locks.releaseAll();
    // The deletion of a released lock object finishes first (the process stays up for it).
    void this.locks.settled().finally(() => this.client.destroy());
  }

  /** The bucket lock shared, and the index caught up with the bucket under it (nothing is collected until release). */
  async holdShared(repo: Repository, purpose: string, waitForGc: boolean): Promise<BucketLockHold> {
    const hold = await this.locks.acquire('shared', purpose, { waitForExclusive: waitForGc });
    try {
      for (const warning of (await this.catchUp(repo, true)).warnings) this.onWarning(warning);
    } catch (e) {
      hold.release();
      throw e;
    }
    return hold;
  }

  /** The bucket lock exclusive (GC), and the index caught up under it; returns the checkpoints the catch-up left out. */
  async holdExclusive(repo: Repository, purpose: string): Promise<{ hold: BucketLockHold; leftOut: RemoteCheckpoint[] }> {
    const hold = await this.locks.acquire('exclusive', purpose);
    try {
      const { warnings, leftOut } = await this.catchUp(repo, true);
      for (const warning of warnings) this.onWarning(warning);
      return { hold, leftOut };
    } catch (e) {
      hold.release();
      throw e;
    }
  }

  // ---- the store's identity -----------------------------------------------------------

  /** The store's id and chunk-id secret, from the bucket; with create, made there if missing. */
  async identity(create: boolean): Promise<StoreIdentity> {
    let body = await this.getObject(STORE_OBJECT);
    if (!body) {
      if (!create) throw new StoreNotFoundError(this.location);
      const made = encodeStoreObject({ storeId: randomBytes(16).toString('hex'), createdAt: new Date().toISOString(), secret: randomBytes(SECRET_BYTES) });
      // Two nodes creating the store at once: one object wins, both use it.
      body = (await this.putIfAbsent(STORE_OBJECT, made)) ? made : await this.get(STORE_OBJECT);
    }
    return decodeStoreObject(body, `${this.location}/${STORE_OBJECT}`);
  }

  // ---- writing: packs, then the checkpoint object (the commit point) ------------------

  async storePacks(packs: PackWriter[]): Promise<void> {
    this.locks.assertHeld();
    const uploads = packs.map((p) => new PackUpload(this, p.name, packPath(this.cacheDir, p.name), p.bytes));
    try {
      await Promise.all(uploads.map((u) => u.begin()));
      await forEachLimited(uploads.flatMap((u) => u.parts()), S3_UPLOAD_CONCURRENCY, (part) => part());
      await Promise.all(uploads.map((u) => u.complete()));
    } catch (e) {
      await Promise.all(uploads.map((u) => u.abort()));
      throw e;
    }
    // The chunk table goes up only once its pack is complete: a reader that sees it finds the pack.
    // The writer wrote each table into the cache when it finished the pack.
    await forEachLimited(packs, S3_UPLOAD_CONCURRENCY, (p) => this.putObject(packKey(p.name, PACK_INDEX_SUFFIX), readFileSync(packTablePath(this.cacheDir, p.name))));
  }

  async commit(record: CommitRecord, firstFreeId: number): Promise<number> {
    // The chunks this commit names were found under the lock: it must still be ours.
    await this.locks.assertFresh();
    let id = firstFreeId;
    for (let attempt = 0; attempt < S3_COMMIT_ATTEMPTS; attempt++) {
      if (await this.putIfAbsent(checkpointKey(id), encodeCheckpoint(id, record))) return id;
      // Another node took this id: go past the highest one there is.
      id = Math.max(id + 1, (await this.highestCheckpointId(id)) + 1);
    }
    throw new S3StoreError(`${this.location}: could not take a checkpoint id in ${S3_COMMIT_ATTEMPTS} attempts (other nodes commit as fast); try again`);
  }

  committed(packs: PackWriter[]): void {
    // Uploaded: reads go to the bucket, so the local copies are not kept.
    for (const p of packs) rmSync(packPath(this.cacheDir, p.name), { force: true });
  }

  async deletePack(name: string): Promise<void> {
    // The chunk table first: without it no reader takes the pack in.
    await this.deleteObject(packKey(name, PACK_INDEX_SUFFIX));
    await this.deleteObject(packKey(name, PACK_SUFFIX));
  }

  async forgetCheckpoints(ids: number[]): Promise<void> {
    if (ids.length === 0) return;
    // Under the lock: a GC rewriting these objects meanwhile would bring them back.
    const hold = await this.locks.acquire('shared', `forgetting checkpoint(s) ${ids.join(', ')}`);
    try {
      await this.deleteCheckpointObjects(ids);
    } finally {
      hold.release();
    }
  }

  /** Under the bucket lock: gone from the bucket, a cache rebuilt later does not bring them back. */
  private async deleteCheckpointObjects(ids: number[]): Promise<void> {
    await forEachLimited(ids, S3_FETCH_CONCURRENCY, (id) => this.deleteObject(checkpointKey(id)));
  }

  /** Every checkpoint object of the bucket (GC: which packs each names). */
  async readCheckpointObjects(): Promise<RemoteCheckpoint[]> {
    const ids = (await this.listObjects(CHECKPOINTS_PREFIX)).map((o) => CHECKPOINT_KEY.exec(o.key)).filter((m) => m !== null).map((m) => Number(m[1]));
    const out: RemoteCheckpoint[] = [];
    await forEachLimited(ids, S3_FETCH_CONCURRENCY, async (id) => {
      const body = await this.getObject(checkpointKey(id));
      if (body) out.push({ id, record: decodeCheckpoint(id, body, this.key(checkpointKey(id))) });
    });
    return out.sort((a, b) => a.id - b.id);
  }

  /** Writes a checkpoint object again, over the old one (GC: only its packs list changes). */
  async rewriteCheckpoint(id: number, record: CommitRecord): Promise<void> {
    await this.putObject(checkpointKey(id), encodeCheckpoint(id, record));
  }

  /** The pack objects in the bucket. */
  async listPackObjects(): Promise<PackListing> {
    const packBytes = new Map<string, number>();
    const tables = new Set<string>();
    for (const o of await this.listObjects(PACKS_PREFIX)) {
      const m = PACK_KEY.exec(o.key);
      if (!m) continue;
      if (m[2] === PACK_SUFFIX) packBytes.set(m[1]!, o.size);
      else tables.add(m[1]!);
    }
    return { packBytes, tables };
  }

  /** Multipart uploads of packs begun and never completed (a writer killed mid-upload). */
  async incompleteUploads(): Promise<{ key: string; uploadId: string }[]> {
    const out: { key: string; uploadId: string }[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      const res = await this.call(`listing the incomplete uploads of ${this.location}`, () =>
        this.client.send(new ListMultipartUploadsCommand({ Bucket: this.where.bucket, Prefix: this.key(PACKS_PREFIX), KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker })),
      );
      for (const u of res.Uploads ?? []) out.push({ key: u.Key!, uploadId: u.UploadId! });
      keyMarker = res.IsTruncated ? res.NextKeyMarker : undefined;
      uploadIdMarker = res.IsTruncated ? res.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
    return out;
  }

  async abortUpload(upload: { key: string; uploadId: string }): Promise<void> {
    await this.call(`aborting the upload of ${upload.key}`, () =>
      this.client.send(new AbortMultipartUploadCommand({ Bucket: this.where.bucket, Key: upload.key, UploadId: upload.uploadId })),
    );
  }

  closePacks(): void {
    // Nothing is held open: every read is a ranged GET.
  }

  // ---- reading --------------------------------------------------------------------------

  async readPackInto(pack: string, offset: number, target: Uint8Array): Promise<number> {
    if (target.length === 0) return 0;
    const key = this.key(packKey(pack, PACK_SUFFIX));
    const range = `bytes=${offset}-${offset + target.length - 1}`;
    let bytes: Uint8Array;
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.where.bucket, Key: key, Range: range }));
      bytes = await res.Body!.transformToByteArray();
    } catch (e) {
      // A range past the end: the pack is shorter than the index says.
      if (e instanceof S3ServiceException && e.$metadata.httpStatusCode === 416) return 0;
      if (e instanceof S3ServiceException && e.name === 'NoSuchKey') throw new PackMissingError(pack, this.location);
      throw this.translate(e, `reading pack ${pack}`);
    }
    const n = Math.min(bytes.length, target.length);
    target.set(bytes.subarray(0, n));
    return n;
  }

  /**
   * Brings the index in line with the bucket: packs whose object and chunk table are both
   * there, and checkpoints whose object is there and whose packs are. Returns what it left
   * out. underLock: the caller holds the bucket lock (else deleting objects takes it).
   */
  async catchUp(repo: Repository, underLock = false): Promise<CatchUpResult> {
    const warnings: string[] = [];
    const leftOut: RemoteCheckpoint[] = [];
    // Read before listing: what is indexed now and missing from the listing was deleted
    // from the bucket (a commit reaches the index only after its objects are written).
    const cached = repo.cachedState();
    const [{ packBytes, tables }, checkpointObjects] = await Promise.all([this.listPackObjects(), this.listObjects(CHECKPOINTS_PREFIX)]);
    const complete = (name: string) => packBytes.has(name) && tables.has(name);
    const bucketIds = new Set<number>();
    for (const o of checkpointObjects) {
      const m = CHECKPOINT_KEY.exec(o.key);
      if (m) bucketIds.add(Number(m[1]));
    }

    const newPacks: RemotePack[] = [];
    await forEachLimited([...packBytes.keys()].filter((n) => complete(n) && !cached.packs.has(n)), S3_FETCH_CONCURRENCY, async (name) => {
      const table = decodePackIndex(await this.get(packKey(name, PACK_INDEX_SUFFIX)), this.key(packKey(name, PACK_INDEX_SUFFIX)));
      if (table.packBytes !== packBytes.get(name)) {
        warnings.push(`pack ${name} holds ${packBytes.get(name)} bytes but its chunk table says ${table.packBytes}: left out`);
        return;
      }
      newPacks.push({ name, bytes: table.packBytes, chunks: table.chunks });
    });
    const taken = new Set([...cached.packs, ...newPacks.map((p) => p.name)]);
    const newCheckpoints: RemoteCheckpoint[] = [];
    await forEachLimited([...bucketIds].filter((id) => !cached.checkpoints.has(id)), S3_FETCH_CONCURRENCY, async (id) => {
      const record = decodeCheckpoint(id, await this.get(checkpointKey(id)), this.key(checkpointKey(id)));
      const missing = record.packs.filter((p) => !taken.has(p));
      if (missing.length > 0) {
        warnings.push(`checkpoint ${id} (job ${record.job.name}) needs pack(s) ${missing.join(', ')}, not in ${this.location}: left out`);
        leftOut.push({ id, record });
        return;
      }
      newCheckpoints.push({ id, record });
    });
    newCheckpoints.sort((a, b) => a.id - b.id);
    // A forget interrupted between its index transaction and the deletion of its objects.
    const forgotten = [...repo.forgottenCheckpoints()];
    if (forgotten.length > 0) {
      const stale = forgotten.filter((id) => bucketIds.has(id));
      await (underLock ? this.deleteCheckpointObjects(stale) : this.forgetCheckpoints(stale));
      repo.clearForgotten(forgotten);
    }
    repo.applyRemote({
      goneCheckpoints: [...cached.checkpoints].filter((id) => !bucketIds.has(id)),
      gonePacks: [...cached.packs].filter((n) => !complete(n)),
      newPacks,
      newCheckpoints,
    });
    return { warnings, leftOut };
  }

  // ---- S3 requests ----------------------------------------------------------------------

  key(name: string): string {
    return this.where.prefix + name;
  }

  get bucket(): string {
    return this.where.bucket;
  }

  private async get(name: string): Promise<Buffer> {
    const body = await this.getObject(name);
    if (!body) throw new S3StoreError(`${this.location}: ${this.key(name)} disappeared while being read (deleted by another node?); try again`);
    return body;
  }

  /** The object's bytes, or undefined when it does not exist. */
  async getObject(name: string): Promise<Buffer | undefined> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.where.bucket, Key: this.key(name) }));
      return Buffer.from(await res.Body!.transformToByteArray());
    } catch (e) {
      if (e instanceof S3ServiceException && e.name === 'NoSuchKey') return undefined;
      throw this.translate(e, `reading ${this.key(name)}`);
    }
  }

  async putObject(name: string, body: Buffer): Promise<void> {
    await this.call(`writing ${this.key(name)}`, () => this.client.send(new PutObjectCommand({ Bucket: this.where.bucket, Key: this.key(name), Body: body })));
  }

  /** Deletes the object (deleting one that does not exist succeeds). */
  async deleteObject(name: string): Promise<void> {
    await this.call(`deleting ${this.key(name)}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.where.bucket, Key: this.key(name) })));
  }


  /** Writes the object unless it exists (If-None-Match: *, atomic in the service); false when it did. */
  private async putIfAbsent(name: string, body: Buffer): Promise<boolean> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.where.bucket, Key: this.key(name), Body: body, IfNoneMatch: '*' }));
      return true;
    } catch (e) {
      if (e instanceof S3ServiceException && e.$metadata.httpStatusCode === 412) return false;
      throw this.translate(e, `writing ${this.key(name)}`);
    }
  }

  async listObjects(prefix: string, startAfter?: string): Promise<ListedObject[]> {
    const out: ListedObject[] = [];
    let token: string | undefined;
    do {
      const res = await this.call(`listing ${this.location}/${prefix}`, () =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.where.bucket,
            Prefix: this.key(prefix),
            ContinuationToken: token,
            StartAfter: startAfter === undefined ? undefined : this.key(startAfter),
          }),
        ),
      );
      for (const o of res.Contents ?? []) out.push({ key: o.Key!.slice(this.where.prefix.length), size: o.Size ?? 0, lastModified: o.LastModified! });
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  private async highestCheckpointId(from: number): Promise<number> {
    let highest = from;
    for (const o of await this.listObjects(CHECKPOINTS_PREFIX, checkpointKey(from))) {
      const m = CHECKPOINT_KEY.exec(o.key);
      if (m) highest = Math.max(highest, Number(m[1]));
    }
    return highest;
  }

  async call<T>(what: string, request: () => Promise<T>): Promise<T> {
    try {
      return await request();
    } catch (e) {
      throw this.translate(e, what);
    }
  }

  /** An SDK failure as a crinc error that says what to do. */
  private translate(e: unknown, what: string): Error {
    if (e instanceof S3StoreError) return e;
    const err = e as Error & { code?: string; $metadata?: { httpStatusCode?: number } };
    const endpoint = process.env.AWS_ENDPOINT_URL ?? 'the endpoint of your AWS configuration';
    if (err.name === 'SignatureDoesNotMatch' || err.name === 'InvalidAccessKeyId' || err.name === 'AccessDenied' || err.$metadata?.httpStatusCode === 403) {
      const why =
        err.name === 'SignatureDoesNotMatch'
          ? 'the request signature does not match: the secret access key is wrong'
          : err.name === 'InvalidAccessKeyId'
            ? 'the access key id is unknown to the service'
            : 'these credentials may not use this bucket';
      return new S3AccessError(
        `${endpoint} refused ${what} in ${this.location} (${err.name}: ${why}). ` +
          'Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile (AWS_PROFILE) in ~/.aws/credentials.',
      );
    }
    if (err.name === 'CredentialsProviderError') {
      return new S3AccessError(`no S3 credentials for ${this.location}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials`);
    }
    if (err.name === 'NoSuchBucket') {
      return new S3StoreError(`bucket "${this.where.bucket}" does not exist at ${endpoint}: create it first (crinc does not), or check --store and AWS_ENDPOINT_URL`);
    }
    if (/region is missing/i.test(err.message)) {
      return new S3StoreError(`no S3 region configured for ${this.location}: set AWS_REGION (for radosgw or MinIO any name they accept, e.g. us-east-1) or region in ~/.aws/config`);
    }
    if (err.code === 'ECONNREFUSED' || err.code === 'ENOTFOUND' || err.code === 'ETIMEDOUT' || err.code === 'EHOSTUNREACH') {
      return new S3StoreError(`cannot reach ${endpoint} for ${what} in ${this.location} (${err.code}): is the S3 service up, and AWS_ENDPOINT_URL right?`);
    }
    return new S3StoreError(`${what} in ${this.location} failed: ${err.name}: ${err.message}`);
  }

  get s3(): S3Client {
    return this.client;
  }
}

/** One pack's upload: a single PUT when it fits one part, else a multipart upload of its file. */
class PackUpload {
  private uploadId: string | undefined;
  private readonly etags: string[] = [];
  private readonly key: string;

  constructor(
    private readonly backend: S3Backend,
    private readonly name: string,
    private readonly file: string,
    private readonly bytes: number,
  ) {
    this.key = backend.key(packKey(name, PACK_SUFFIX));
  }

  private get multipart(): boolean {
    return this.bytes > S3_PART_BYTES;
  }

  async begin(): Promise<void> {
    if (!this.multipart) return;
    const res = await this.backend.call(`starting the upload of pack ${this.name}`, () =>
      this.backend.s3.send(new CreateMultipartUploadCommand({ Bucket: this.backend.bucket, Key: this.key })),
    );
    this.uploadId = res.UploadId!;
  }

  /** The uploads of its parts, to run in any order. */
  parts(): (() => Promise<void>)[] {
    if (!this.multipart) {
      return [() => this.backend.call(`uploading pack ${this.name}`, async () => {
        await this.backend.s3.send(new PutObjectCommand({ Bucket: this.backend.bucket, Key: this.key, Body: readRange(this.file, 0, this.bytes) }));
      })];
    }
    const count = Math.ceil(this.bytes / S3_PART_BYTES);
    return Array.from({ length: count }, (_, i) => async () => {
      const offset = i * S3_PART_BYTES;
      const body = readRange(this.file, offset, Math.min(S3_PART_BYTES, this.bytes - offset));
      const res = await this.backend.call(`uploading part ${i + 1} of pack ${this.name}`, () =>
        this.backend.s3.send(new UploadPartCommand({ Bucket: this.backend.bucket, Key: this.key, UploadId: this.uploadId, PartNumber: i + 1, Body: body })),
      );
      this.etags[i] = res.ETag!;
    });
  }

  async complete(): Promise<void> {
    if (!this.multipart) return;
    const parts = this.etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 }));
    await this.backend.call(`finishing the upload of pack ${this.name}`, () =>
      this.backend.s3.send(new CompleteMultipartUploadCommand({ Bucket: this.backend.bucket, Key: this.key, UploadId: this.uploadId, MultipartUpload: { Parts: parts } })),
    );
    this.uploadId = undefined;
  }

  /** Drops the parts of an upload that will not complete (best effort: the error that got here matters more). */
  async abort(): Promise<void> {
    if (this.uploadId === undefined) return;
    try {
      await this.backend.s3.send(new AbortMultipartUploadCommand({ Bucket: this.backend.bucket, Key: this.key, UploadId: this.uploadId }));
    } catch {
      // Left for the bucket's lifecycle rule on incomplete multipart uploads (README).
    }
    this.uploadId = undefined;
  }
}

function readRange(file: string, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  const fd = openSync(file, 'r');
  try {
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, offset + done);
      if (n === 0) throw new Error(`${file} ended at ${offset + done}, ${offset + length} expected`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Runs fn over items with at most `limit` at once; the first failure is thrown once all have settled. */
async function forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (next < items.length && !failure) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        failure ??= { error: e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
}

