// The store's own objects beside the packs (docs/FORMAT.md, "Objects"), the same bytes in
// a store directory and in S3: store.json (identity and chunk-id secret), each pack's
// chunk table (.idx) and one immutable object per checkpoint (its commit point). With the
// packs they hold everything the SQLite index holds about checkpoints and chunks.
import { SECRET_BYTES } from '../codec/limits.js';
import type { CommitRecord } from './backend.js';
import { StoreFormatError } from './errors.js';
import {
  CHECKPOINTS_DIR,
  CHUNK_ID_BYTES,
  OBJECT_FORMAT,
  PACK_INDEX_ENTRY_BYTES,
  PACK_INDEX_HEADER_BYTES,
  PACK_INDEX_MAGIC,
  PACK_INDEX_SUFFIX,
  PACK_SUFFIX,
  PACKS_DIR,
  writePackIndexEntry,
  writePackIndexHeader,
} from './format.js';
import { PackedChunks } from './pack.js';

export const STORE_OBJECT = 'store.json';
export const PACKS_PREFIX = `${PACKS_DIR}/`;
export const CHECKPOINTS_PREFIX = `${CHECKPOINTS_DIR}/`;
export { PACK_INDEX_SUFFIX, PACK_SUFFIX };
/** Checkpoint keys are zero-padded so that their order is the ids' order. */
const CHECKPOINT_KEY_DIGITS = 12;
const PACK_NAME = /^[0-9a-f]{32}$/;
export const CHECKPOINT_KEY = /^checkpoints\/(\d{12})$/;
export const PACK_KEY = /^packs\/[0-9a-f]{2}\/([0-9a-f]{32})(\.pack|\.idx)$/;

export interface StoreObject {
  format: number;
  storeId: string;
  createdAt: string;
  secret: string;
}

/** The store's identity as the index keeps it. */
export interface StoreIdentity {
  storeId: string;
  secret: Uint8Array;
  createdAt: string;
}

export function packKey(name: string, suffix: string): string {
  if (!PACK_NAME.test(name)) throw new Error(`pack name ${name} is not 32 hex digits`);
  return `${PACKS_PREFIX}${name.slice(0, 2)}/${name}${suffix}`;
}

export function checkpointKey(id: number): string {
  return `${CHECKPOINTS_PREFIX}${String(id).padStart(CHECKPOINT_KEY_DIGITS, '0')}`;
}

export function parseJson<T>(body: Buffer, key: string): T {
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch (e) {
    throw new StoreFormatError(`${key} is not valid JSON (${(e as Error).message}): the object is damaged`);
  }
}

export function encodeStoreObject(identity: StoreIdentity): Buffer {
  const o: StoreObject = { format: OBJECT_FORMAT, storeId: identity.storeId, createdAt: identity.createdAt, secret: Buffer.from(identity.secret).toString('base64') };
  return Buffer.from(JSON.stringify(o));
}

export function decodeStoreObject(body: Buffer, where: string): StoreIdentity {
  const store = parseJson<StoreObject>(body, where);
  if (store.format !== OBJECT_FORMAT) {
    throw new StoreFormatError(`${where} has store format ${store.format}; this crinc reads format ${OBJECT_FORMAT}. Use the crinc release that wrote it.`);
  }
  const secret = Buffer.from(store.secret ?? '', 'base64');
  if (secret.length !== SECRET_BYTES || typeof store.storeId !== 'string') {
    throw new StoreFormatError(`${where} is damaged (no store id or no ${SECRET_BYTES}-byte secret)`);
  }
  return { storeId: store.storeId, secret: new Uint8Array(secret), createdAt: store.createdAt };
}

/** A pack's chunk table: what its blob headers say, in one small object. */
export function encodePackIndex(chunks: PackedChunks, packBytes: number): Buffer {
  const out = Buffer.alloc(PACK_INDEX_HEADER_BYTES + chunks.count * PACK_INDEX_ENTRY_BYTES);
  writePackIndexHeader(out, chunks.count, packBytes);
  for (let i = 0; i < chunks.count; i++) {
    writePackIndexEntry(out, PACK_INDEX_HEADER_BYTES + i * PACK_INDEX_ENTRY_BYTES, chunks.ids, i * CHUNK_ID_BYTES, chunks.offsets[i]!, chunks.storedLengths[i]!, chunks.rawLengths[i]!, chunks.compressions[i]!);
  }
  return out;
}

export function decodePackIndex(body: Buffer, key: string): { packBytes: number; chunks: PackedChunks } {
  const damaged = (why: string) => new StoreFormatError(`${key} is damaged: ${why}`);
  if (body.length < PACK_INDEX_HEADER_BYTES || !body.subarray(0, 8).equals(PACK_INDEX_MAGIC)) throw damaged('no CRINCIX1 header');
  const version = body.readUInt32LE(8);
  if (version !== OBJECT_FORMAT) throw new StoreFormatError(`${key} has format ${version}; this crinc reads format ${OBJECT_FORMAT}`);
  const count = body.readUInt32LE(12);
  if (body.length !== PACK_INDEX_HEADER_BYTES + count * PACK_INDEX_ENTRY_BYTES) throw damaged(`${body.length} bytes for ${count} chunks`);
  const packBytes = Number(body.readBigUInt64LE(16));
  const chunks = new PackedChunks();
  for (let i = 0; i < count; i++) {
    const o = PACK_INDEX_HEADER_BYTES + i * PACK_INDEX_ENTRY_BYTES;
    const offset = body.readUInt32LE(o + 16);
    const stored = body.readUInt32LE(o + 20);
    if (offset + stored > packBytes) throw damaged(`chunk ${i} lies past the pack's ${packBytes} bytes`);
    chunks.push(body.subarray(o, o + CHUNK_ID_BYTES), offset, stored, body.readUInt32LE(o + 24), body.readUInt8(o + 28));
  }
  return { packBytes, chunks };
}

interface CheckpointObject extends Omit<CommitRecord, 'files'> {
  format: number;
  id: number;
  files: (Omit<CommitRecord['files'][number], 'manifest'> & { manifest: string })[];
}

export function encodeCheckpoint(id: number, record: CommitRecord): Buffer {
  const object: CheckpointObject = {
    format: OBJECT_FORMAT,
    id,
    ...record,
    files: record.files.map((f) => ({ ...f, manifest: f.manifest.toString('base64') })),
  };
  return Buffer.from(JSON.stringify(object));
}

export function decodeCheckpoint(id: number, body: Buffer, key: string): CommitRecord {
  const o = parseJson<CheckpointObject>(body, key);
  if (o.format !== OBJECT_FORMAT) throw new StoreFormatError(`${key} has format ${o.format}; this crinc reads format ${OBJECT_FORMAT}`);
  if (o.id !== id || !o.job?.name || !o.checkpoint || !Array.isArray(o.packs) || !Array.isArray(o.files)) {
    throw new StoreFormatError(`${key} is damaged: not a checkpoint object for id ${id}`);
  }
  return {
    job: o.job,
    checkpoint: o.checkpoint,
    packs: o.packs,
    files: o.files.map((f) => ({ ...f, manifest: Buffer.from(f.manifest, 'base64') })),
  };
}
