// LZ4 block compression and decompression over linear memory.
//
// Written from the LZ4 block format specification (lz4_Block_format.md). A
// block is a series of sequences; each sequence is
//   token (high nibble: literal length, low nibble: match length - 4; 15
//   means "extension bytes follow": each adds its value, 255 means "more"),
//   literal length extension, literals, 2-byte little-endian match offset
//   (1..65535), match length extension.
// The last sequence holds literals only and ends the block. A compressor
// must leave the last 5 bytes as literals and start no match later than 12
// bytes before the end, so any standard decoder can use its fast paths; this
// compressor does both. The decoder accepts every block the grammar allows.
//
// Nothing here allocates: callers pass addresses inside areas they own. The
// compressor writes up to WILD_COPY_SLACK bytes past the end of its output
// and reads up to WILD_COPY_SLACK past the end of its input (16-byte copies);
// callers leave that slack. The decompressor never reads outside its input
// slot and never writes outside its output slot.

/** Shortest match the format can express. */
const MIN_MATCH: u32 = 4;
/** The last bytes of a block are always literals (format rule). */
const LAST_LITERALS: u32 = 5;
/** No match starts within this many bytes of the block end (format rule). */
const MATCH_START_MARGIN: u32 = 12;
/** Blocks shorter than this hold literals only (no match can satisfy both rules above). */
const MIN_LENGTH_FOR_MATCHES: u32 = MATCH_START_MARGIN + 1;
const MAX_OFFSET: u32 = 65535;
/** Nibble value that says the length continues in extension bytes. */
const LENGTH_NIBBLE_MAX: u32 = 15;
const EXTENSION_BYTE_MAX: u32 = 255;
const OFFSET_BYTES: u32 = 2;

/**
 * Misses before the search step grows by one byte: after 64 misses in a row
 * the compressor probes every 2nd position, after 128 every 3rd, ... so
 * incompressible data is skipped quickly (the reference compressor's
 * acceleration 1).
 */
const SKIP_TRIGGER_BITS: u32 = 6;

/**
 * Hash table of 2^HASH_BITS u32 positions (64 KiB). Measured on pages: 13
 * bits and more beat 12 (fewer false candidates to compare, so faster, and
 * a slightly better ratio); 15 and 16 gained nothing over 14.
 */
const HASH_BITS: u32 = 14;
const HASH_MULTIPLIER: u32 = 2654435761;
export const HASH_TABLE_BYTES: u32 = (1 << HASH_BITS) * sizeof<u32>();

/** Bytes a 16-byte wild copy may touch past the end of what it copies (rounded up). */
export const WILD_COPY_SLACK: u32 = 32;

/** Negative results of decompressBlock(): why a block is rejected. */
export const DECODE_TRUNCATED: i32 = -1;
export const DECODE_BAD_OFFSET: i32 = -2;
export const DECODE_TOO_LONG: i32 = -3;
export const DECODE_TOO_SHORT: i32 = -4;

/**
 * Worst-case compressed size of `length` bytes: incompressible input
 * becomes one run of literals, which costs a token and one length-extension
 * byte per 255 literals; 16 covers the token and the rounding.
 */
export function compressBound(length: u32): u32 {
  return length + length / 255 + 16;
}

// ---------------------------------------------------------------- hash table
//
// Slots hold "positions": base + (address - chunk start), where every chunk
// gets a new base far above every position stored before. A slot left by an
// earlier chunk then fails the same distance check as a match too far back,
// so the table never needs clearing between chunks, and the output depends
// only on the chunk itself.

let tableBase: u32 = MAX_OFFSET + 1;

/**
 * Reserves positions for the next chunk of `length` bytes and returns its
 * base. Bases are MAX_OFFSET apart beyond the chunk, so a slot from any
 * earlier chunk is always more than MAX_OFFSET behind: one distance check
 * rejects both stale slots and matches that are too far.
 */
function claimTableBase(table: usize, length: u32): u32 {
  const span = length + MAX_OFFSET + 1;
  if (tableBase > <u32>0xFFFFFFFF - span) {
    // Positions would wrap: start over with an empty table.
    memory.fill(table, 0, HASH_TABLE_BYTES);
    tableBase = MAX_OFFSET + 1;
  }
  const base = tableBase;
  tableBase += span;
  return base;
}

@inline function slotOf(table: usize, sequence: u32): usize {
  return table + (<usize>((sequence * HASH_MULTIPLIER) >> (32 - HASH_BITS)) << 2);
}

// ---------------------------------------------------------------- compression

/** Number of equal bytes at p and m, stopping at limit (for p). */
@inline function countEqual(p: usize, m: usize, limit: usize): u32 {
  const start = p;
  // Most matches are short: one 8-byte compare settles them.
  if (p + 8 <= limit) {
    const difference = load<u64>(p) ^ load<u64>(m);
    if (difference != 0) return <u32>(ctz<u64>(difference) >> 3);
    p += 8;
    m += 8;
  }
  while (p + 16 <= limit) {
    const equalLanes = i8x16.bitmask(i8x16.eq(v128.load(p), v128.load(m)));
    if (equalLanes != 0xFFFF) return <u32>(p - start) + ctz<u32>(~equalLanes);
    p += 16;
    m += 16;
  }
  while (p < limit && load<u8>(p) == load<u8>(m)) {
    p++;
    m++;
  }
  return <u32>(p - start);
}

/** Writes the extension bytes of a length whose nibble is 15; returns the new output end. */
@inline function writeLengthExtension(op: usize, remaining: u32): usize {
  while (remaining >= EXTENSION_BYTE_MAX) {
    store<u8>(op++, <u8>EXTENSION_BYTE_MAX);
    remaining -= EXTENSION_BYTE_MAX;
  }
  store<u8>(op++, <u8>remaining);
  return op;
}

/** Copies length bytes 16 at a time; may write up to 15 bytes past dst + length. */
@inline function wildCopy(dst: usize, src: usize, length: u32): void {
  let done: u32 = 0;
  do {
    v128.store(dst + done, v128.load(src + done));
    done += 16;
  } while (done < length);
}

/** Token with the literal length, its extension, and the literals; returns the new output end. */
@inline function writeLiterals(token: usize, literals: usize, length: u32): usize {
  let op = token + 1;
  if (length >= LENGTH_NIBBLE_MAX) {
    store<u8>(token, <u8>(LENGTH_NIBBLE_MAX << 4));
    op = writeLengthExtension(op, length - LENGTH_NIBBLE_MAX);
  } else {
    store<u8>(token, <u8>(length << 4));
  }
  wildCopy(op, literals, length);
  return op + length;
}

/**
 * Compresses srcLength bytes at src into one LZ4 block at dst, which must
 * have compressBound(srcLength) + WILD_COPY_SLACK bytes of room. `table` is
 * a HASH_TABLE_BYTES area owned by the caller. Returns the block's length.
 */
export function compressBlock(src: usize, srcLength: u32, dst: usize, table: usize): u32 {
  const srcEnd = src + srcLength;
  let op = dst;
  let anchor = src;

  if (srcLength >= MIN_LENGTH_FOR_MATCHES) {
    const base = claimTableBase(table, srcLength);
    const matchStartLimit = srcEnd - MATCH_START_MARGIN;
    const matchEndLimit = srcEnd - LAST_LITERALS;
    store<u32>(slotOf(table, load<u32>(src)), base);
    let ip = src + 1;

    while (true) {
      // Find the next match at or after ip, probing sparser as misses pile up.
      let candidate: usize = 0;
      let missCount: u32 = 1 << SKIP_TRIGGER_BITS;
      let found = false;
      while (ip <= matchStartLimit) {
        const sequence = load<u32>(ip);
        const slot = slotOf(table, sequence);
        const previous = load<u32>(slot);
        const position = base + <u32>(ip - src);
        store<u32>(slot, position);
        if (position - previous <= MAX_OFFSET) {
          candidate = src + <usize>(previous - base);
          if (load<u32>(candidate) == sequence) {
            found = true;
            break;
          }
        }
        ip += missCount++ >> SKIP_TRIGGER_BITS;
      }
      if (!found) break;

      // The match may begin earlier than the probe that found it.
      while (ip > anchor && candidate > src && load<u8>(ip - 1) == load<u8>(candidate - 1)) {
        ip--;
        candidate--;
      }
      let token = op;
      op = writeLiterals(token, anchor, <u32>(ip - anchor));

      // Emit the match, then as long as the next position matches too, more
      // matches with no literals in between.
      while (true) {
        store<u16>(op, <u16>(ip - candidate));
        op += OFFSET_BYTES;
        const extraLength = countEqual(ip + MIN_MATCH, candidate + MIN_MATCH, matchEndLimit);
        ip += MIN_MATCH + extraLength;
        if (extraLength >= LENGTH_NIBBLE_MAX) {
          store<u8>(token, load<u8>(token) | <u8>LENGTH_NIBBLE_MAX);
          op = writeLengthExtension(op, extraLength - LENGTH_NIBBLE_MAX);
        } else {
          store<u8>(token, load<u8>(token) | <u8>extraLength);
        }
        anchor = ip;
        if (ip > matchStartLimit) break;

        // Index a position inside the match so that later data can refer to it.
        const inside = ip - 2;
        store<u32>(slotOf(table, load<u32>(inside)), base + <u32>(inside - src));

        const sequence = load<u32>(ip);
        const slot = slotOf(table, sequence);
        const previous = load<u32>(slot);
        const position = base + <u32>(ip - src);
        store<u32>(slot, position);
        if (position - previous > MAX_OFFSET) break;
        candidate = src + <usize>(previous - base);
        if (load<u32>(candidate) != sequence) break;
        token = op++;
        store<u8>(token, 0);
      }
      if (anchor > matchStartLimit) break;
      ip = anchor + 1;
    }
  }

  // The last sequence: the remaining bytes as literals, copied exactly.
  const lastLength = <u32>(srcEnd - anchor);
  const token = op++;
  if (lastLength >= LENGTH_NIBBLE_MAX) {
    store<u8>(token, <u8>(LENGTH_NIBBLE_MAX << 4));
    op = writeLengthExtension(op, lastLength - LENGTH_NIBBLE_MAX);
  } else {
    store<u8>(token, <u8>(lastLength << 4));
  }
  memory.copy(op, anchor, lastLength);
  op += lastLength;
  return <u32>(op - dst);
}

// ---------------------------------------------------------------- decompression

/**
 * The fast path of decompressBlock() needs this much room: 16 bytes of
 * literals read, at most 14 literals then the 2-byte offset; and, for the
 * output, at most 14 literals then two 16-byte match stores.
 */
const FAST_INPUT_ROOM: usize = 16 + OFFSET_BYTES;
const FAST_OUTPUT_ROOM: usize = 14 + 32;

/**
 * For a match offset d < 16: lane i of PATTERN_LANES[d] is i % d, so that a
 * swizzle of the 16 bytes at (output - d) repeats the match's period over a
 * whole vector.
 */
const PATTERN_LANES: usize = memory.data<u8>([
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // offset 0 is never used
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
  0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0,
  0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
  0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0,
  0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3,
  0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0, 1,
  0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3, 4,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 1, 2,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 1,
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0,
], 16);

/**
 * For offset d < 16: how far to advance between stores of the pattern, the
 * largest multiple of d that is at most 16 (the pattern is then still in
 * phase at the next store).
 */
const PATTERN_STEPS: usize = memory.data<u8>([
  16, 16, 16, 15, 16, 15, 12, 14, 16, 9, 10, 11, 12, 13, 14, 15,
]);

/** The sum read by the last readLengthExtension() call (its second result). */
let extensionSum: u32 = 0;

/**
 * Reads a length extension starting at ip: adds bytes until one is below
 * 255, leaving the sum in extensionSum. Returns the new input position, or
 * 0 when the input ends first. The sum cannot overflow: an input of n bytes
 * adds at most 255 * n, and inputs are bounded by the caller's area (a few
 * MiB).
 */
@inline function readLengthExtension(ip: usize, srcEnd: usize): usize {
  let sum: u32 = 0;
  let byte: u32;
  do {
    if (ip >= srcEnd) return 0;
    byte = load<u8>(ip++);
    sum += byte;
  } while (byte == EXTENSION_BYTE_MAX);
  extensionSum = sum;
  return ip;
}

/**
 * Decodes the LZ4 block of srcLength bytes at src into exactly dstLength
 * bytes at dst. Returns dstLength, or a negative DECODE_* code. Every read
 * stays in [src, src + srcLength) and every write in [dst, dst + dstLength).
 */
export function decompressBlock(src: usize, srcLength: u32, dst: usize, dstLength: u32): i32 {
  const srcEnd = src + srcLength;
  const dstEnd = dst + dstLength;
  let ip = src;
  let op = dst;

  while (true) {
    if (ip >= srcEnd) return DECODE_TRUNCATED;
    const token = <u32>load<u8>(ip++);

    let literalLength = token >> 4;
    let matchLength = token & LENGTH_NIBBLE_MAX;
    if (literalLength < LENGTH_NIBBLE_MAX && matchLength < LENGTH_NIBBLE_MAX &&
        srcEnd - ip >= FAST_INPUT_ROOM && dstEnd - op >= FAST_OUTPUT_ROOM) {
      // The common sequence, far from both ends: short literals, an offset
      // (the input room guarantees one follows) and a short match, copied
      // with fixed 16-byte stores and no length checks.
      v128.store(op, v128.load(ip));
      ip += literalLength;
      op += literalLength;
      const offset = <usize>load<u16>(ip);
      ip += OFFSET_BYTES;
      if (offset == 0 || offset > op - dst) return DECODE_BAD_OFFSET;
      const match = op - offset;
      if (offset >= 16) {
        v128.store(op, v128.load(match));
        v128.store(op, v128.load(match, 16), 16);
      } else {
        const pattern = i8x16.swizzle(v128.load(match), v128.load(PATTERN_LANES + (offset << 4)));
        const step = <usize>load<u8>(PATTERN_STEPS + offset);
        v128.store(op, pattern);
        v128.store(op + step, pattern);
      }
      op += matchLength + MIN_MATCH;
      continue;
    }
    if (literalLength == LENGTH_NIBBLE_MAX) {
      ip = readLengthExtension(ip, srcEnd);
      if (ip == 0) return DECODE_TRUNCATED;
      literalLength += extensionSum;
    }
    if (<usize>literalLength > srcEnd - ip) return DECODE_TRUNCATED;
    if (<usize>literalLength > dstEnd - op) return DECODE_TOO_LONG;
    if (literalLength <= 16 && srcEnd - ip >= 16 && dstEnd - op >= 16) {
      v128.store(op, v128.load(ip));
    } else {
      memory.copy(op, ip, literalLength);
    }
    ip += literalLength;
    op += literalLength;

    // A block ends right after the literals of its last sequence.
    if (ip == srcEnd) break;

    if (srcEnd - ip < OFFSET_BYTES) return DECODE_TRUNCATED;
    const offset = <usize>load<u16>(ip);
    ip += OFFSET_BYTES;
    if (offset == 0 || offset > op - dst) return DECODE_BAD_OFFSET;

    if (matchLength == LENGTH_NIBBLE_MAX) {
      ip = readLengthExtension(ip, srcEnd);
      if (ip == 0) return DECODE_TRUNCATED;
      matchLength += extensionSum;
    }
    matchLength += MIN_MATCH;
    if (<usize>matchLength > dstEnd - op) return DECODE_TOO_LONG;

    const match = op - offset;
    if (offset < 16 && dstEnd - op < 16) {
      // Too near the end of the slot to load a pattern vector: byte by byte,
      // which is right for overlaps.
      for (let i: u32 = 0; i < matchLength; i++) store<u8>(op + i, load<u8>(match + i));
    } else {
      let done: u32 = 0;
      let pattern = v128.splat<i8>(0);
      if (offset >= 16) {
        // Each load reads only bytes before the store position: already final.
        while (done + 16 <= matchLength) {
          v128.store(op + done, v128.load(match + done));
          done += 16;
        }
      } else {
        // Overlapping match: repeat its period. The load may cover bytes at
        // op and later, but the pattern lanes use only the first `offset`.
        pattern = i8x16.swizzle(v128.load(match), v128.load(PATTERN_LANES + (offset << 4)));
        const step = <u32>load<u8>(PATTERN_STEPS + offset);
        while (done + 16 <= matchLength) {
          v128.store(op + done, pattern);
          done += step;
        }
      }
      // The last bytes: one more 16-byte store when the slot has room past
      // the match end (done is a multiple of the pattern step, so the
      // pattern is in phase), else byte by byte.
      if (done < matchLength) {
        if (dstEnd - (op + done) >= 16) {
          v128.store(op + done, offset >= 16 ? v128.load(match + done) : pattern);
        } else {
          for (let i = done; i < matchLength; i++) store<u8>(op + i, load<u8>(match + i));
        }
      }
    }
    op += matchLength;
  }
  return op == dstEnd ? <i32>dstLength : DECODE_TOO_SHORT;
}
