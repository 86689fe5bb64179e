// Where a store keeps its packs, their chunk tables and the object of each commit, beside
// the SQLite index, which is a cache of them (docs/FORMAT.md): files in the store's
// directory, or objects in S3, under the same names and with the same bytes.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createFileDurable, removeFilesDurable } from './durable.js';
import { StoreError } from './errors.js';
import { CHECKPOINTS_DIR } from './format.js';
import { CHECKPOINT_KEY, checkpointKey, decodeCheckpoint, encodeCheckpoint } from './objects.js';
import type { PackWriter } from './pack.js';
import { PackReader, packPath, packTablePath } from './pack.js';
import type { CheckpointRecord, FileManifest, JobRecord, Repository } from './repository.js';

/** What a commit adds, as the index stores it; an S3 store writes it out as the commit point. */
export interface CommitRecord {
  job: Pick<JobRecord, 'name' | 'command' | 'cwd' | 'createdAt'>;
  checkpoint: Omit<CheckpointRecord, 'id' | 'job'>;
  /** Names of the packs this commit wrote. */
  packs: string[];
  /** The files rows: manifests as stored (inline ids, or the ids of indirect parts). */
  files: (Omit<FileManifest, 'ids'> & { manifest: Buffer; indirect: boolean })[];
}

export interface StoreBackend {
  /** Where the store is, for messages: a directory or s3://bucket/prefix. */
  readonly location: string;
  /** Makes a commit's finished packs durable where readers look for them; before the commit point. */
  storePacks(packs: PackWriter[]): Promise<void>;
  /**
   * The commit point: writes the checkpoint object under the lowest free id not below
   * firstFreeId, never over an existing one, and returns that id.
   */
  commit(record: CommitRecord, firstFreeId: number): Promise<number>;
  /** After the index transaction: the packs' local copies are no longer needed by this backend. */
  committed(packs: PackWriter[]): void;
  /** Reads into target from offset of a pack; returns the bytes read (fewer only at the pack's end). */
  readPackInto(pack: string, offset: number, target: Uint8Array): Promise<number>;
  /** Removes a pack that nothing references any more. */
  deletePack(name: string): Promise<void>;
  /** Removes the record of forgotten checkpoints (retention), before the index forgets them. */
  forgetCheckpoints(ids: number[]): Promise<void>;
  /** Closes open pack files (a GC may have deleted them); they reopen when read. */
  closePacks(): void;
  /**
   * Beside the store lock held shared: what keeps other nodes' GCs away (an S3 store's
   * bucket lock, with the index caught up under it); none for a store directory.
   * Without waitForGc, a GC running elsewhere is an error (BucketLockedError).
   */
  holdShared(repo: Repository, purpose: string, waitForGc: boolean): Promise<{ release(): void } | undefined>;
  /** Whether packs live elsewhere than the store directory (repair works on local stores only). */
  readonly remote: boolean;
  close(): void;
}

/** A checkpoint id taken by a concurrent commit is skipped; this many in a row is an error. */
const LOCAL_COMMIT_ATTEMPTS = 64;

/** Packs, chunk tables and checkpoint objects as files in the store directory. */
export class LocalBackend implements StoreBackend {
  readonly remote = false;
  private readonly reader: PackReader;

  constructor(readonly location: string) {
    this.reader = new PackReader(location);
  }

  async storePacks(): Promise<void> {
    // Already in place: PackWriter.finish fsynced and renamed each pack, and its writer
    // wrote the pack's chunk table then.
  }

  async commit(record: CommitRecord, firstFreeId: number): Promise<number> {
    for (let id = firstFreeId; id < firstFreeId + LOCAL_COMMIT_ATTEMPTS; id++) {
      if (createFileDurable(this.objectPath(id), encodeCheckpoint(id, record))) return id;
    }
    throw new StoreError(`${this.location}: could not take a checkpoint id in ${LOCAL_COMMIT_ATTEMPTS} attempts; run crinc repair`);
  }

  committed(): void {}

  async readPackInto(pack: string, offset: number, target: Uint8Array): Promise<number> {
    return this.reader.readInto(pack, offset, target);
  }

  async deletePack(name: string): Promise<void> {
    this.reader.forget(name);
    removeFilesDurable([packPath(this.location, name), packTablePath(this.location, name)]);
  }

  async forgetCheckpoints(ids: number[]): Promise<void> {
    this.removeCheckpointObjects(ids);
  }

  removeCheckpointObjects(ids: number[]): void {
    removeFilesDurable(ids.map((id) => this.objectPath(id)));
  }

  closePacks(): void {
    this.reader.close();
  }

  async holdShared(): Promise<undefined> {
    // The store lock, taken by the caller, is all a store directory needs.
    return undefined;
  }

  close(): void {
    this.reader.close();
  }

  /** The ids of the checkpoint objects in the store directory. */
  checkpointObjectIds(): number[] {
    let names: string[];
    try {
      names = readdirSync(join(this.location, CHECKPOINTS_DIR));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    return names.map((n) => CHECKPOINT_KEY.exec(`${CHECKPOINTS_DIR}/${n}`)).filter((m) => m !== null).map((m) => Number(m[1]));
  }

  readCheckpointObject(id: number): CommitRecord {
    return decodeCheckpoint(id, readFileSync(this.objectPath(id)), this.objectPath(id));
  }

  /** Writes the object of a checkpoint that has none (an index of an older format). */
  writeCheckpointObject(id: number, record: CommitRecord): void {
    createFileDurable(this.objectPath(id), encodeCheckpoint(id, record));
  }

  private objectPath(id: number): string {
    return join(this.location, checkpointKey(id));
  }
}
