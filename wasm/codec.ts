// crinc page codec: keyed XXH3-128 chunk ids, zero-page detection and LZ4
// (wasm/lz4.ts) over linear memory.
//
// The hash is the XXH3 128-bit algorithm of the xxHash specification in its
// "withSecret" form (seed 0, caller-supplied 192-byte secret). With the
// default secret kSecret it equals the standard unkeyed XXH3_128bits(), so
// ids can be checked against any XXH3 implementation.
//
// Nothing is allocated: JS copies its bytes into a fixed input area, calls
// one of the exported functions, and reads ids, flags and other results
// from fixed output areas. The batch calls (hashAndCompressChunks,
// compressChunks, decodeChunks) take a table of per-chunk descriptors, so
// one call handles a whole batch of chunks. The areas live past
// __heap_base; the module never uses the runtime allocator, so that space
// is ours.
//
// Ids are written in the canonical XXH128 byte order: high 64 bits
// big-endian, then low 64 bits big-endian.

import {
  compressBlock, compressBound, decompressBlock, HASH_TABLE_BYTES, WILD_COPY_SLACK,
  DECODE_BAD_OFFSET, DECODE_TOO_LONG, DECODE_TRUNCATED,
} from './lz4';

// ---------------------------------------------------------------- constants

const PRIME32_1: u64 = 0x9E3779B1;
const PRIME32_2: u64 = 0x85EBCA77;
const PRIME32_3: u64 = 0xC2B2AE3D;
const PRIME64_1: u64 = 0x9E3779B185EBCA87;
const PRIME64_2: u64 = 0xC2B2AE3D27D4EB4F;
const PRIME64_3: u64 = 0x165667B19E3779F9;
const PRIME64_4: u64 = 0x85EBCA77C2B2AE63;
const PRIME64_5: u64 = 0x27D4EB2F165667C5;
const PRIME_MX1: u64 = 0x165667919E3779F9;
const PRIME_MX2: u64 = 0x9FB21C651E98DF25;

/** Size of every secret this module hashes with (XXH3's default size). */
const SECRET_BYTES: u32 = 192;
const STRIPE_BYTES: u32 = 64;
/** Bytes the secret window advances per stripe. */
const SECRET_CONSUME_RATE: u32 = 8;
const STRIPES_PER_BLOCK: u32 = (SECRET_BYTES - STRIPE_BYTES) / SECRET_CONSUME_RATE;
const BLOCK_BYTES: u32 = STRIPE_BYTES * STRIPES_PER_BLOCK;
/** Secret offset of the key for the last (possibly overlapping) stripe. */
const LAST_STRIPE_SECRET_OFFSET: u32 = SECRET_BYTES - STRIPE_BYTES - 7;
const SCRAMBLE_SECRET_OFFSET: u32 = SECRET_BYTES - STRIPE_BYTES;
const MERGE_LOW_SECRET_OFFSET: u32 = 11;
const MERGE_HIGH_SECRET_OFFSET: u32 = SECRET_BYTES - 64 - 11;
/** The 129..240-byte path reads its tail keys relative to XXH3's minimum secret size. */
const SECRET_SIZE_MIN: u32 = 136;
const MIDSIZE_START_OFFSET: u32 = 3;
const MIDSIZE_LAST_OFFSET: u32 = 17;
const MIDSIZE_MAX_BYTES: u32 = 240;

const PAGE_BYTES: u32 = 4096;
const ID_BYTES: u32 = 16;

/** The raw bytes of one batch call, or the largest single chunk. */
const MAX_RAW_BYTES: u32 = 4 << 20;
const MAX_PAGES_PER_BATCH: u32 = MAX_RAW_BYTES / PAGE_BYTES;
/** Chunks per batch call: one per page of a full batch. */
const MAX_CHUNKS_PER_BATCH: u32 = MAX_PAGES_PER_BATCH;
/** The stored LZ4 form starts with the raw length, u32 little-endian. */
const LENGTH_PREFIX_BYTES: u32 = 4;
/**
 * Both data areas hold the stored LZ4 form of MAX_RAW_BYTES even when
 * nothing compresses (LZ4's worst case plus the length prefix): the input
 * area as decodeChunks() input, the output area as compression output.
 */
const INPUT_AREA_BYTES: u32 = LENGTH_PREFIX_BYTES + compressBound(MAX_RAW_BYTES);
const OUTPUT_AREA_BYTES: u32 = INPUT_AREA_BYTES;

/** Per-chunk flag values written by hashPages() and hashAndCompressChunks(). */
const FLAG_NORMAL: u8 = 0;
const FLAG_ZERO: u8 = 1;
const FLAG_DUPLICATE: u8 = 2;

/** How a chunk's stored bytes are encoded: the store's `compression` values. */
const FORM_RAW: u8 = 0;
const FORM_LZ4: u8 = 1;

/**
 * The chunk table: one 16-byte entry per chunk of a batch call, four u32:
 * input offset (from inputAreaPtr()), input length, output offset (from
 * outputAreaPtr()), output length.
 */
const TABLE_ENTRY_BYTES: u32 = 16;
const ENTRY_INPUT_OFFSET: usize = 0;
const ENTRY_INPUT_LENGTH: usize = 4;
const ENTRY_OUTPUT_OFFSET: usize = 8;
const ENTRY_OUTPUT_LENGTH: usize = 12;

/** Negative results of the batch calls: the call itself was invalid. */
const BATCH_TOO_MANY_CHUNKS: i32 = -1;
const BATCH_INPUT_OUT_OF_RANGE: i32 = -2;
const BATCH_OUTPUT_FULL: i32 = -3;

/** Per-chunk status written by decodeChunks() into the flags area. */
const STATUS_OK: u8 = 0;
const STATUS_TRUNCATED: u8 = 1;
const STATUS_BAD_OFFSET: u8 = 2;
const STATUS_TOO_LONG: u8 = 3;
const STATUS_TOO_SHORT: u8 = 4;
const STATUS_LENGTH_HEADER: u8 = 5;
const STATUS_ID_MISMATCH: u8 = 6;
const STATUS_UNKNOWN_FORM: u8 = 7;
const STATUS_RAW_LENGTH: u8 = 8;

/**
 * Duplicate detection keeps the distinct ids seen in the current scope in an
 * open-addressing table. It is bounded so memory stays fixed: past
 * DEDUP_MAX_ENTRIES distinct ids, new ids are no longer recorded (later
 * copies of them are then reported as normal, which is always safe).
 * Half-full at most keeps linear probing short.
 */
const DEDUP_SLOT_BITS: u32 = 16;
const DEDUP_SLOTS: u32 = 1 << DEDUP_SLOT_BITS;
const DEDUP_SLOT_MASK: u32 = DEDUP_SLOTS - 1;
const DEDUP_MAX_ENTRIES: u32 = DEDUP_SLOTS / 2;

/** XXH3's default secret (kSecret) from the specification. */
const DEFAULT_SECRET: usize = memory.data<u8>([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
  0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
  0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
  0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
  0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
  0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
  0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
  0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
], 16);

// ---------------------------------------------------------- memory layout

const AREA_ALIGN: usize = 64;
const WASM_PAGE_BYTES: usize = 65536;

@inline function alignUp(offset: usize): usize {
  return (offset + AREA_ALIGN - 1) & ~(AREA_ALIGN - 1);
}

/** Where JS writes the 192 bytes of a custom secret before setSecret(192). */
const SECRET_INPUT_AREA: usize = alignUp(__heap_base);
/** The secret in use: a copy of either kSecret or the custom secret. */
const ACTIVE_SECRET: usize = alignUp(SECRET_INPUT_AREA + SECRET_BYTES);
/** Id of an all-zero page under the active secret, computed in setSecret(). */
const ZERO_PAGE_ID: usize = alignUp(ACTIVE_SECRET + SECRET_BYTES);
/** 4096 zero bytes, never written: the input for ZERO_PAGE_ID. */
const ZERO_PAGE: usize = alignUp(ZERO_PAGE_ID + ID_BYTES);
const IDS_AREA: usize = alignUp(ZERO_PAGE + PAGE_BYTES);
const FLAGS_AREA: usize = alignUp(IDS_AREA + MAX_CHUNKS_PER_BATCH * ID_BYTES);
/** One u8 per chunk: FORM_RAW or FORM_LZ4. */
const FORMS_AREA: usize = alignUp(FLAGS_AREA + MAX_CHUNKS_PER_BATCH);
const CHUNK_TABLE: usize = alignUp(FORMS_AREA + MAX_CHUNKS_PER_BATCH);
/** decodeChunks() hashes each decoded chunk here to compare it with its expected id. */
const DECODED_ID: usize = alignUp(CHUNK_TABLE + MAX_CHUNKS_PER_BATCH * TABLE_ENTRY_BYTES);
const LZ4_HASH_TABLE: usize = alignUp(DECODED_ID + ID_BYTES);
const DEDUP_KEYS: usize = alignUp(LZ4_HASH_TABLE + HASH_TABLE_BYTES);
/** Per-slot generation: a slot is occupied when it equals dedupGeneration. */
const DEDUP_GENERATIONS: usize = alignUp(DEDUP_KEYS + DEDUP_SLOTS * ID_BYTES);
/** Both data areas are followed by WILD_COPY_SLACK bytes that 16-byte copies may touch. */
const INPUT_AREA: usize = alignUp(DEDUP_GENERATIONS + DEDUP_SLOTS * sizeof<u32>());
const OUTPUT_AREA: usize = alignUp(INPUT_AREA + INPUT_AREA_BYTES + WILD_COPY_SLACK);
const MEMORY_END: usize = OUTPUT_AREA + OUTPUT_AREA_BYTES + WILD_COPY_SLACK;

let dedupGeneration: u32 = 0;
let dedupEntryCount: u32 = 0;

// Grow once at instantiation; fresh memory is zeroed, which ZERO_PAGE, the
// generation table and the LZ4 hash table (wasm/lz4.ts) rely on.
const wasmPagesNeeded = <i32>((MEMORY_END + WASM_PAGE_BYTES - 1) / WASM_PAGE_BYTES);
if (memory.size() < wasmPagesNeeded) {
  if (memory.grow(wasmPagesNeeded - memory.size()) < 0) unreachable();
}

// -------------------------------------------------------- scalar helpers

/** High 64 bits of the 128-bit product a*b (the low half is a*b in u64). */
@inline function mulHigh64(a: u64, b: u64): u64 {
  const aLo = a & 0xFFFFFFFF;
  const aHi = a >> 32;
  const bLo = b & 0xFFFFFFFF;
  const bHi = b >> 32;
  const loLo = aLo * bLo;
  const hiLo = aHi * bLo;
  const loHi = aLo * bHi;
  const hiHi = aHi * bHi;
  const cross = (loLo >> 32) + (hiLo & 0xFFFFFFFF) + loHi;
  return (hiLo >> 32) + (cross >> 32) + hiHi;
}

/** Folds the 128-bit product a*b into 64 bits: low half xor high half. */
@inline function mulFold64(a: u64, b: u64): u64 {
  return (a * b) ^ mulHigh64(a, b);
}

@inline function xxh64Avalanche(h: u64): u64 {
  h ^= h >> 33;
  h *= PRIME64_2;
  h ^= h >> 29;
  h *= PRIME64_3;
  return h ^ (h >> 32);
}

@inline function xxh3Avalanche(h: u64): u64 {
  h ^= h >> 37;
  h *= PRIME_MX1;
  return h ^ (h >> 32);
}

@inline function mix16(input: usize, secret: usize): u64 {
  return mulFold64(load<u64>(input) ^ load<u64>(secret), load<u64>(input, 8) ^ load<u64>(secret, 8));
}

@inline function storeId(out: usize, high: u64, low: u64): void {
  store<u64>(out, bswap<u64>(high));
  store<u64>(out, bswap<u64>(low), 8);
}

// ------------------------------------------------------ short inputs (<=240)
// All take seed 0: the withSecret variant never mixes a seed in.

function hashLen0(secret: usize, out: usize): void {
  const low = xxh64Avalanche(load<u64>(secret, 64) ^ load<u64>(secret, 72));
  const high = xxh64Avalanche(load<u64>(secret, 80) ^ load<u64>(secret, 88));
  storeId(out, high, low);
}

function hashLen1To3(input: usize, len: u32, secret: usize, out: usize): void {
  const first = <u32>load<u8>(input);
  const middle = <u32>load<u8>(input + (len >> 1));
  const last = <u32>load<u8>(input + len - 1);
  const combinedLow: u32 = (first << 16) | (middle << 24) | last | (len << 8);
  const combinedHigh: u32 = rotl<u32>(bswap<u32>(combinedLow), 13);
  const bitflipLow = <u64>(load<u32>(secret) ^ load<u32>(secret, 4));
  const bitflipHigh = <u64>(load<u32>(secret, 8) ^ load<u32>(secret, 12));
  storeId(out,
    xxh64Avalanche(<u64>combinedHigh ^ bitflipHigh),
    xxh64Avalanche(<u64>combinedLow ^ bitflipLow));
}

function hashLen4To8(input: usize, len: u32, secret: usize, out: usize): void {
  const inputLow = <u64>load<u32>(input);
  const inputHigh = <u64>load<u32>(input + len - 4);
  const bitflip = load<u64>(secret, 16) ^ load<u64>(secret, 24);
  const keyed = (inputLow | (inputHigh << 32)) ^ bitflip;
  const multiplier = PRIME64_1 + (<u64>len << 2);
  let low = keyed * multiplier;
  let high = mulHigh64(keyed, multiplier);
  high += low << 1;
  low ^= high >> 3;
  low ^= low >> 35;
  low *= PRIME_MX2;
  low ^= low >> 28;
  storeId(out, xxh3Avalanche(high), low);
}

function hashLen9To16(input: usize, len: u32, secret: usize, out: usize): void {
  const bitflipLow = load<u64>(secret, 32) ^ load<u64>(secret, 40);
  const bitflipHigh = load<u64>(secret, 48) ^ load<u64>(secret, 56);
  const inputLow = load<u64>(input);
  let inputHigh = load<u64>(input + len - 8);
  const product = inputLow ^ inputHigh ^ bitflipLow;
  let low = product * PRIME64_1;
  let high = mulHigh64(product, PRIME64_1);
  low += <u64>(len - 1) << 54;
  inputHigh ^= bitflipHigh;
  high += inputHigh + (inputHigh & 0xFFFFFFFF) * (PRIME32_2 - 1);
  low ^= bswap<u64>(high);
  const finalHigh = mulHigh64(low, PRIME64_2) + high * PRIME64_2;
  const finalLow = low * PRIME64_2;
  storeId(out, xxh3Avalanche(finalHigh), xxh3Avalanche(finalLow));
}

// The 17..240-byte paths mix 32-byte pairs into a two-lane accumulator;
// these globals carry it between the inlined mix steps and the finalizer.
let mixLow: u64 = 0;
let mixHigh: u64 = 0;

@inline function mix32(first: usize, second: usize, secret: usize): void {
  mixLow += mix16(first, secret);
  mixLow ^= load<u64>(second) + load<u64>(second, 8);
  mixHigh += mix16(second, secret + 16);
  mixHigh ^= load<u64>(first) + load<u64>(first, 8);
}

@inline function storeMixedId(len: u32, out: usize): void {
  const low = mixLow + mixHigh;
  const high = mixLow * PRIME64_1 + mixHigh * PRIME64_4 + <u64>len * PRIME64_2;
  storeId(out, 0 - xxh3Avalanche(high), xxh3Avalanche(low));
}

function hashLen17To128(input: usize, len: u32, secret: usize, out: usize): void {
  mixLow = <u64>len * PRIME64_1;
  mixHigh = 0;
  const end = input + len;
  // Pairs are mixed from the innermost outward, as the specification orders them.
  if (len > 32) {
    if (len > 64) {
      if (len > 96) mix32(input + 48, end - 64, secret + 96);
      mix32(input + 32, end - 48, secret + 64);
    }
    mix32(input + 16, end - 32, secret + 32);
  }
  mix32(input, end - 16, secret);
  storeMixedId(len, out);
}

function hashLen129To240(input: usize, len: u32, secret: usize, out: usize): void {
  const MIX_ROUNDS_BEFORE_AVALANCHE: u32 = 4;
  const roundCount = len / 32;
  mixLow = <u64>len * PRIME64_1;
  mixHigh = 0;
  for (let round: u32 = 0; round < MIX_ROUNDS_BEFORE_AVALANCHE; round++) {
    const at = input + round * 32;
    mix32(at, at + 16, secret + round * 32);
  }
  mixLow = xxh3Avalanche(mixLow);
  mixHigh = xxh3Avalanche(mixHigh);
  for (let round = MIX_ROUNDS_BEFORE_AVALANCHE; round < roundCount; round++) {
    const at = input + round * 32;
    mix32(at, at + 16, secret + MIDSIZE_START_OFFSET + (round - MIX_ROUNDS_BEFORE_AVALANCHE) * 32);
  }
  const end = input + len;
  mix32(end - 16, end - 32, secret + SECRET_SIZE_MIN - MIDSIZE_LAST_OFFSET - 16);
  storeMixedId(len, out);
}

// ------------------------------------------------------ long inputs (>240)
// The eight 64-bit accumulator lanes live in four v128 locals. Lane pairs
// (2k, 2k+1) share a vector, which is what makes the "acc[i ^ 1] += data"
// step a swap of the two halves of the data vector.

/** One 16-byte slice of XXH3's 64-byte stripe accumulation. */
@inline function accumulateSlice(acc: v128, data: v128, key: v128): v128 {
  const dataKey = v128.xor(data, key);
  // lo32(dataKey) * hi32(dataKey) in each 64-bit lane.
  const product = i64x2.extmul_low_i32x4_u(
    i32x4.shuffle(dataKey, dataKey, 0, 2, 0, 2),
    i32x4.shuffle(dataKey, dataKey, 1, 3, 1, 3),
  );
  return i64x2.add(i64x2.add(acc, i64x2.shuffle(data, data, 1, 0)), product);
}

@inline function scrambleSlice(acc: v128, key: v128): v128 {
  const mixed = v128.xor(v128.xor(acc, i64x2.shr_u(acc, 47)), key);
  return i64x2.mul(mixed, i64x2.splat(PRIME32_1));
}

@inline function mergeAccumulators(a0: v128, a1: v128, a2: v128, a3: v128, secret: usize, start: u64): u64 {
  let result = start;
  result += mulFold64(i64x2.extract_lane(a0, 0) ^ load<u64>(secret, 0), i64x2.extract_lane(a0, 1) ^ load<u64>(secret, 8));
  result += mulFold64(i64x2.extract_lane(a1, 0) ^ load<u64>(secret, 16), i64x2.extract_lane(a1, 1) ^ load<u64>(secret, 24));
  result += mulFold64(i64x2.extract_lane(a2, 0) ^ load<u64>(secret, 32), i64x2.extract_lane(a2, 1) ^ load<u64>(secret, 40));
  result += mulFold64(i64x2.extract_lane(a3, 0) ^ load<u64>(secret, 48), i64x2.extract_lane(a3, 1) ^ load<u64>(secret, 56));
  return xxh3Avalanche(result);
}

@inline function hashLong(input: usize, len: u32, secret: usize, out: usize): void {
  let acc0 = i64x2(<i64>PRIME32_3, <i64>PRIME64_1);
  let acc1 = i64x2(<i64>PRIME64_2, <i64>PRIME64_3);
  let acc2 = i64x2(<i64>PRIME64_4, <i64>PRIME32_2);
  let acc3 = i64x2(<i64>PRIME64_5, <i64>PRIME32_1);

  // The last stripe is always handled separately (it ends exactly at len), so
  // a length that is a multiple of the block size leaves its last block partial.
  const fullBlocks = (len - 1) / BLOCK_BYTES;
  for (let block: u32 = 0; block < fullBlocks; block++) {
    const blockStart = input + block * BLOCK_BYTES;
    for (let stripe: u32 = 0; stripe < STRIPES_PER_BLOCK; stripe++) {
      const data = blockStart + stripe * STRIPE_BYTES;
      const key = secret + stripe * SECRET_CONSUME_RATE;
      acc0 = accumulateSlice(acc0, v128.load(data, 0), v128.load(key, 0));
      acc1 = accumulateSlice(acc1, v128.load(data, 16), v128.load(key, 16));
      acc2 = accumulateSlice(acc2, v128.load(data, 32), v128.load(key, 32));
      acc3 = accumulateSlice(acc3, v128.load(data, 48), v128.load(key, 48));
    }
    const scrambleKey = secret + SCRAMBLE_SECRET_OFFSET;
    acc0 = scrambleSlice(acc0, v128.load(scrambleKey, 0));
    acc1 = scrambleSlice(acc1, v128.load(scrambleKey, 16));
    acc2 = scrambleSlice(acc2, v128.load(scrambleKey, 32));
    acc3 = scrambleSlice(acc3, v128.load(scrambleKey, 48));
  }

  const tailStart = input + fullBlocks * BLOCK_BYTES;
  const tailStripes = (len - 1 - fullBlocks * BLOCK_BYTES) / STRIPE_BYTES;
  for (let stripe: u32 = 0; stripe < tailStripes; stripe++) {
    const data = tailStart + stripe * STRIPE_BYTES;
    const key = secret + stripe * SECRET_CONSUME_RATE;
    acc0 = accumulateSlice(acc0, v128.load(data, 0), v128.load(key, 0));
    acc1 = accumulateSlice(acc1, v128.load(data, 16), v128.load(key, 16));
    acc2 = accumulateSlice(acc2, v128.load(data, 32), v128.load(key, 32));
    acc3 = accumulateSlice(acc3, v128.load(data, 48), v128.load(key, 48));
  }

  const lastData = input + len - STRIPE_BYTES;
  const lastKey = secret + LAST_STRIPE_SECRET_OFFSET;
  acc0 = accumulateSlice(acc0, v128.load(lastData, 0), v128.load(lastKey, 0));
  acc1 = accumulateSlice(acc1, v128.load(lastData, 16), v128.load(lastKey, 16));
  acc2 = accumulateSlice(acc2, v128.load(lastData, 32), v128.load(lastKey, 32));
  acc3 = accumulateSlice(acc3, v128.load(lastData, 48), v128.load(lastKey, 48));

  const low = mergeAccumulators(acc0, acc1, acc2, acc3, secret + MERGE_LOW_SECRET_OFFSET, <u64>len * PRIME64_1);
  const high = mergeAccumulators(acc0, acc1, acc2, acc3, secret + MERGE_HIGH_SECRET_OFFSET, ~(<u64>len * PRIME64_2));
  storeId(out, high, low);
}

function hashAnyLength(input: usize, len: u32, secret: usize, out: usize): void {
  if (len <= 16) {
    if (len > 8) hashLen9To16(input, len, secret, out);
    else if (len >= 4) hashLen4To8(input, len, secret, out);
    else if (len > 0) hashLen1To3(input, len, secret, out);
    else hashLen0(secret, out);
  } else if (len <= 128) {
    hashLen17To128(input, len, secret, out);
  } else if (len <= MIDSIZE_MAX_BYTES) {
    hashLen129To240(input, len, secret, out);
  } else {
    hashLong(input, len, secret, out);
  }
}

/** A separate, non-inlined copy of the long path with the page length fixed. */
function hashPage(page: usize, out: usize): void {
  hashLong(page, PAGE_BYTES, ACTIVE_SECRET, out);
}

// ------------------------------------------------------------ zero pages

/** True when all 4096 bytes are zero; returns at the first nonzero 64 bytes. */
@inline function isZeroPage(page: usize): bool {
  for (let offset: usize = 0; offset < PAGE_BYTES; offset += 64) {
    const at = page + offset;
    const any = v128.or(
      v128.or(v128.load(at, 0), v128.load(at, 16)),
      v128.or(v128.load(at, 32), v128.load(at, 48)),
    );
    if (v128.any_true(any)) return false;
  }
  return true;
}

/** True when all `length` bytes at `at` are zero; for chunks of any length. */
function isZeroBytes(at: usize, length: u32): bool {
  const end = at + length;
  let p = at;
  for (; p + 64 <= end; p += 64) {
    const any = v128.or(
      v128.or(v128.load(p, 0), v128.load(p, 16)),
      v128.or(v128.load(p, 32), v128.load(p, 48)),
    );
    if (v128.any_true(any)) return false;
  }
  for (; p < end; p++) {
    if (load<u8>(p) != 0) return false;
  }
  return true;
}

// ------------------------------------------------------------ duplicates

function startDedupScope(): void {
  dedupEntryCount = 0;
  dedupGeneration++;
  if (dedupGeneration == 0) {
    // The counter wrapped: stale slots could look current, so clear them.
    memory.fill(DEDUP_GENERATIONS, 0, DEDUP_SLOTS * sizeof<u32>());
    dedupGeneration = 1;
  }
}

/** Records the id at `id`; returns true when it was already recorded in this scope. */
function recordId(id: usize): bool {
  const idHigh = load<u64>(id);
  const idLow = load<u64>(id, 8);
  // Ids are uniform hashes, so any of their bits make a good slot index.
  let slot = load<u32>(id, 12) & DEDUP_SLOT_MASK;
  while (load<u32>(DEDUP_GENERATIONS + (<usize>slot << 2)) == dedupGeneration) {
    const key = DEDUP_KEYS + (<usize>slot << 4);
    if (load<u64>(key) == idHigh && load<u64>(key, 8) == idLow) return true;
    slot = (slot + 1) & DEDUP_SLOT_MASK;
  }
  if (dedupEntryCount < DEDUP_MAX_ENTRIES) {
    const key = DEDUP_KEYS + (<usize>slot << 4);
    store<u64>(key, idHigh);
    store<u64>(key, idLow, 8);
    store<u32>(DEDUP_GENERATIONS + (<usize>slot << 2), dedupGeneration);
    dedupEntryCount++;
  }
  return false;
}

// ------------------------------------------------------------- exports

export function inputAreaPtr(): usize { return INPUT_AREA; }
export function inputAreaBytes(): u32 { return INPUT_AREA_BYTES; }
export function outputAreaPtr(): usize { return OUTPUT_AREA; }
export function outputAreaBytes(): u32 { return OUTPUT_AREA_BYTES; }
export function idsAreaPtr(): usize { return IDS_AREA; }
export function flagsAreaPtr(): usize { return FLAGS_AREA; }
export function formsAreaPtr(): usize { return FORMS_AREA; }
export function chunkTablePtr(): usize { return CHUNK_TABLE; }
export function maxChunksPerBatch(): u32 { return MAX_CHUNKS_PER_BATCH; }
export function secretAreaPtr(): usize { return SECRET_INPUT_AREA; }

/**
 * Selects the secret for all later hashing. secretLength 0 selects XXH3's
 * default kSecret (unkeyed XXH3-128); SECRET_BYTES selects the bytes JS wrote
 * at secretAreaPtr(). Any other length is refused (returns false, nothing
 * changes).
 */
export function setSecret(secretLength: u32): bool {
  if (secretLength == 0) memory.copy(ACTIVE_SECRET, DEFAULT_SECRET, SECRET_BYTES);
  else if (secretLength == SECRET_BYTES) memory.copy(ACTIVE_SECRET, SECRET_INPUT_AREA, SECRET_BYTES);
  else return false;
  hashPage(ZERO_PAGE, ZERO_PAGE_ID);
  return true;
}

/**
 * Hashes pageCount 4096-byte pages at inputAreaPtr(). For page i, writes its
 * 16-byte id at idsAreaPtr() + 16*i and its flag at flagsAreaPtr() + i:
 *   0 normal; 1 all-zero (the id is still the page's true hash, taken from a
 *   value precomputed in setSecret); 2 same id as an earlier nonzero page of
 *   the current duplicate scope (see DEDUP_MAX_ENTRIES for the bound).
 * continueScope = false starts a new duplicate scope; JS passes true for
 * later batches of one logical call. Returns false (writing nothing) when
 * pageCount exceeds the input area.
 */
export function hashPages(pageCount: u32, continueScope: bool): bool {
  if (pageCount > MAX_PAGES_PER_BATCH) return false;
  if (!continueScope) startDedupScope();
  for (let index: u32 = 0; index < pageCount; index++) {
    const page = INPUT_AREA + <usize>index * PAGE_BYTES;
    const id = IDS_AREA + <usize>index * ID_BYTES;
    let flag = FLAG_NORMAL;
    if (isZeroPage(page)) {
      memory.copy(id, ZERO_PAGE_ID, ID_BYTES);
      flag = FLAG_ZERO;
    } else {
      hashPage(page, id);
      if (recordId(id)) flag = FLAG_DUPLICATE;
    }
    store<u8>(FLAGS_AREA + index, flag);
  }
  return true;
}

/**
 * XXH3-128 with the active secret of `length` bytes at inputAreaPtr();
 * writes the 16-byte id at idsAreaPtr(). Returns false (writing nothing)
 * when length exceeds the input area.
 */
export function hashBytes(length: u32): bool {
  if (length > INPUT_AREA_BYTES) return false;
  hashAnyLength(INPUT_AREA, length, ACTIVE_SECRET, IDS_AREA);
  return true;
}

// ------------------------------------------------------------ batch calls

@inline function entryField(index: u32, field: usize): usize {
  return CHUNK_TABLE + <usize>index * TABLE_ENTRY_BYTES + field;
}

/** False when a table entry's input range leaves the input area. */
@inline function inputInRange(index: u32): bool {
  const offset = load<u32>(entryField(index, ENTRY_INPUT_OFFSET));
  const length = load<u32>(entryField(index, ENTRY_INPUT_LENGTH));
  return offset <= INPUT_AREA_BYTES && length <= INPUT_AREA_BYTES - offset;
}

/**
 * Writes the stored LZ4 form of `length` bytes at `input` (4-byte LE length,
 * then the block) at `output`; returns its length. `output` needs
 * LENGTH_PREFIX_BYTES + compressBound(length) + WILD_COPY_SLACK bytes.
 */
@inline function compressStored(input: usize, length: u32, output: usize): u32 {
  store<u32>(output, length);
  return LENGTH_PREFIX_BYTES + compressBlock(input, length, output + LENGTH_PREFIX_BYTES, LZ4_HASH_TABLE);
}

/**
 * True when the worst-case stored form of an inputLength-byte chunk fits in
 * the output area from outputUsed on (wild copies past it land in the
 * WILD_COPY_SLACK that follows the area).
 */
@inline function outputRoomFor(outputUsed: u32, inputLength: u32): bool {
  return <u64>outputUsed + LENGTH_PREFIX_BYTES + compressBound(inputLength) <= <u64>OUTPUT_AREA_BYTES;
}

/**
 * The ingest step for a batch of chunks (pages or blocks). Chunk i is the
 * input its table entry names (input offset and length). For it, writes
 * its id at idsAreaPtr() + 16*i, its flag (as hashPages) at
 * flagsAreaPtr() + i, its form at formsAreaPtr() + i, and its stored form
 * at outputAreaPtr() + the entry's output offset, with the entry's output
 * length. The stored form is FORM_LZ4 (length prefix + block) when that is
 * strictly shorter than the chunk, else FORM_RAW (the chunk's bytes). Zero
 * and duplicate chunks are not compressed and store nothing (output length
 * 0). Stored forms follow each other in chunk order from output offset 0.
 *
 * continueScope as in hashPages(). Returns the output bytes used, or a
 * negative BATCH_* code (nothing meaningful written).
 */
export function hashAndCompressChunks(chunkCount: u32, continueScope: bool): i32 {
  if (chunkCount > MAX_CHUNKS_PER_BATCH) return BATCH_TOO_MANY_CHUNKS;
  for (let index: u32 = 0; index < chunkCount; index++) {
    if (!inputInRange(index)) return BATCH_INPUT_OUT_OF_RANGE;
  }
  if (!continueScope) startDedupScope();
  let outputUsed: u32 = 0;
  for (let index: u32 = 0; index < chunkCount; index++) {
    const input = INPUT_AREA + <usize>load<u32>(entryField(index, ENTRY_INPUT_OFFSET));
    const length = load<u32>(entryField(index, ENTRY_INPUT_LENGTH));
    const id = IDS_AREA + <usize>index * ID_BYTES;
    let flag = FLAG_NORMAL;
    if (length == PAGE_BYTES) {
      if (isZeroPage(input)) {
        memory.copy(id, ZERO_PAGE_ID, ID_BYTES);
        flag = FLAG_ZERO;
      } else {
        hashPage(input, id);
      }
    } else {
      hashAnyLength(input, length, ACTIVE_SECRET, id);
      if (isZeroBytes(input, length)) flag = FLAG_ZERO;
    }
    if (flag == FLAG_NORMAL && recordId(id)) flag = FLAG_DUPLICATE;
    store<u8>(FLAGS_AREA + index, flag);
    store<u32>(entryField(index, ENTRY_OUTPUT_OFFSET), outputUsed);

    let storedLength: u32 = 0;
    let form = FORM_RAW;
    if (flag == FLAG_NORMAL) {
      if (!outputRoomFor(outputUsed, length)) return BATCH_OUTPUT_FULL;
      const output = OUTPUT_AREA + <usize>outputUsed;
      storedLength = compressStored(input, length, output);
      if (storedLength < length) {
        form = FORM_LZ4;
      } else {
        memory.copy(output, input, length);
        storedLength = length;
      }
    }
    store<u32>(entryField(index, ENTRY_OUTPUT_LENGTH), storedLength);
    store<u8>(FORMS_AREA + index, form);
    outputUsed += storedLength;
  }
  return <i32>outputUsed;
}

/**
 * Compresses each chunk of the table into its stored LZ4 form (length
 * prefix + block), whatever its size, one after the other from output
 * offset 0; writes output offsets and lengths into the table. Returns the
 * output bytes used, or a negative BATCH_* code.
 */
export function compressChunks(chunkCount: u32): i32 {
  if (chunkCount > MAX_CHUNKS_PER_BATCH) return BATCH_TOO_MANY_CHUNKS;
  let outputUsed: u32 = 0;
  for (let index: u32 = 0; index < chunkCount; index++) {
    if (!inputInRange(index)) return BATCH_INPUT_OUT_OF_RANGE;
    const input = INPUT_AREA + <usize>load<u32>(entryField(index, ENTRY_INPUT_OFFSET));
    const length = load<u32>(entryField(index, ENTRY_INPUT_LENGTH));
    if (!outputRoomFor(outputUsed, length)) return BATCH_OUTPUT_FULL;
    const storedLength = compressStored(input, length, OUTPUT_AREA + <usize>outputUsed);
    store<u32>(entryField(index, ENTRY_OUTPUT_OFFSET), outputUsed);
    store<u32>(entryField(index, ENTRY_OUTPUT_LENGTH), storedLength);
    outputUsed += storedLength;
  }
  return <i32>outputUsed;
}

/** The STATUS_* for a negative decompressBlock() result. */
function statusOfDecode(result: i32): u8 {
  if (result == DECODE_TRUNCATED) return STATUS_TRUNCATED;
  if (result == DECODE_BAD_OFFSET) return STATUS_BAD_OFFSET;
  if (result == DECODE_TOO_LONG) return STATUS_TOO_LONG;
  return STATUS_TOO_SHORT; // DECODE_TOO_SHORT, the only code left
}

/** Turns the stored form of one chunk into its raw bytes; returns a STATUS_* value. */
function decodeStored(input: usize, storedLength: u32, form: u8, output: usize, rawLength: u32): u8 {
  if (form == FORM_RAW) {
    if (storedLength != rawLength) return STATUS_RAW_LENGTH;
    memory.copy(output, input, rawLength);
    return STATUS_OK;
  }
  if (form != FORM_LZ4) return STATUS_UNKNOWN_FORM;
  if (storedLength < LENGTH_PREFIX_BYTES) return STATUS_TRUNCATED;
  // The prefix is checked before decoding: it must name the expected length.
  if (load<u32>(input) != rawLength) return STATUS_LENGTH_HEADER;
  const result = decompressBlock(input + LENGTH_PREFIX_BYTES, storedLength - LENGTH_PREFIX_BYTES, output, rawLength);
  return result < 0 ? statusOfDecode(result) : STATUS_OK;
}

/**
 * Restores a batch of stored chunks. For chunk i the table gives the input
 * offset and stored length, and the raw length as its output length; the
 * form is at formsAreaPtr() + i. Raw bytes are written one after the other
 * from output offset 0 (output offsets go into the table), each decoded
 * exactly into its own slot. With verifyIds, each result is hashed and
 * compared with the id JS wrote at idsAreaPtr() + 16*i. Writes a STATUS_*
 * per chunk at flagsAreaPtr() + i (a failed chunk's slot holds no
 * meaningful bytes) and returns the number of failed chunks, or a negative
 * BATCH_* code.
 */
export function decodeChunks(chunkCount: u32, verifyIds: bool): i32 {
  if (chunkCount > MAX_CHUNKS_PER_BATCH) return BATCH_TOO_MANY_CHUNKS;
  let outputUsed: u64 = 0;
  for (let index: u32 = 0; index < chunkCount; index++) {
    if (!inputInRange(index)) return BATCH_INPUT_OUT_OF_RANGE;
    outputUsed += load<u32>(entryField(index, ENTRY_OUTPUT_LENGTH));
  }
  if (outputUsed > <u64>OUTPUT_AREA_BYTES) return BATCH_OUTPUT_FULL;

  let failures: i32 = 0;
  let outputOffset: u32 = 0;
  for (let index: u32 = 0; index < chunkCount; index++) {
    const input = INPUT_AREA + <usize>load<u32>(entryField(index, ENTRY_INPUT_OFFSET));
    const storedLength = load<u32>(entryField(index, ENTRY_INPUT_LENGTH));
    const rawLength = load<u32>(entryField(index, ENTRY_OUTPUT_LENGTH));
    const output = OUTPUT_AREA + <usize>outputOffset;
    store<u32>(entryField(index, ENTRY_OUTPUT_OFFSET), outputOffset);
    let status = decodeStored(input, storedLength, load<u8>(FORMS_AREA + index), output, rawLength);
    if (status == STATUS_OK && verifyIds) {
      hashAnyLength(output, rawLength, ACTIVE_SECRET, DECODED_ID);
      const expected = IDS_AREA + <usize>index * ID_BYTES;
      if (load<u64>(DECODED_ID) != load<u64>(expected) || load<u64>(DECODED_ID, 8) != load<u64>(expected, 8)) {
        status = STATUS_ID_MISMATCH;
      }
    }
    store<u8>(FLAGS_AREA + index, status);
    if (status != STATUS_OK) failures++;
    outputOffset += rawLength;
  }
  return failures;
}

setSecret(0);
