// Where a store keeps its packs and the record of each commit, beside the SQLite index
// (docs/FORMAT.md). A local store keeps them in its directory and the index is the
// record; an S3 store keeps them as objects and the index is a cache of them.
import { rmSync } from 'node:fs';
import type { PackWriter } from './pack.js';
import { PackReader, packPath } from './pack.js';
import type { CheckpointRecord, FileManifest, JobRecord } from './repository.js';

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
   * The commit point of a remote store: records the commit and returns the checkpoint id
   * it took (not below firstFreeId). A local store returns undefined: its index
   * transaction is the commit point and numbers the checkpoint.
   */
  commit(record: CommitRecord, firstFreeId: number): Promise<number | undefined>;
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
  /** Whether packs live elsewhere than the store directory (GC and verify work on local stores only). */
  readonly remote: boolean;
  close(): void;
}

/** Packs as files under <store>/packs/; the index is the only record of commits. */
export class LocalBackend implements StoreBackend {
  readonly remote = false;
  private readonly reader: PackReader;

  constructor(readonly location: string) {
    this.reader = new PackReader(location);
  }

  async storePacks(): Promise<void> {
    // PackWriter.finish already fsynced and renamed them in place.
  }

  async commit(): Promise<number | undefined> {
    return undefined;
  }

  committed(): void {}

  async readPackInto(pack: string, offset: number, target: Uint8Array): Promise<number> {
    return this.reader.readInto(pack, offset, target);
  }

  async deletePack(name: string): Promise<void> {
    this.reader.forget(name);
    rmSync(packPath(this.location, name), { force: true });
  }

  async forgetCheckpoints(): Promise<void> {
    // The index is the only record.
  }

  closePacks(): void {
    this.reader.close();
  }

  close(): void {
    this.reader.close();
  }
}
