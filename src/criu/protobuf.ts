// A minimal reader and writer for the protobuf wire format, enough for the few CRIU image
// messages crinc interprets (pagemap entries, dump statistics) or writes (pagemaps).
// Field numbers come from CRIU's images/*.proto; unknown fields are skipped, as
// protobuf requires.

export class ProtobufDecodeError extends Error {
  override name = 'ProtobufDecodeError';
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_FIXED32 = 5;
const MAX_VARINT_BYTES = 10;

export type FieldValue = bigint | Uint8Array;

/** Decodes one message into field number → last value seen (CRIU messages use no repeats here). */
export function decodeMessage(buf: Uint8Array): Map<number, FieldValue> {
  const fields = new Map<number, FieldValue>();
  let pos = 0;
  const readVarint = (): bigint => {
    let result = 0n;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (pos >= buf.length) throw new ProtobufDecodeError('truncated varint');
      const byte = buf[pos++]!;
      result |= BigInt(byte & 0x7f) << BigInt(7 * i);
      if ((byte & 0x80) === 0) return result;
    }
    throw new ProtobufDecodeError('varint longer than 10 bytes');
  };
  while (pos < buf.length) {
    const key = Number(readVarint());
    const field = key >>> 3;
    const wire = key & 7;
    switch (wire) {
      case WIRE_VARINT:
        fields.set(field, readVarint());
        break;
      case WIRE_FIXED64:
        if (pos + 8 > buf.length) throw new ProtobufDecodeError('truncated fixed64');
        fields.set(field, Buffer.from(buf.buffer, buf.byteOffset + pos, 8).readBigUInt64LE());
        pos += 8;
        break;
      case WIRE_FIXED32:
        if (pos + 4 > buf.length) throw new ProtobufDecodeError('truncated fixed32');
        fields.set(field, BigInt(Buffer.from(buf.buffer, buf.byteOffset + pos, 4).readUInt32LE()));
        pos += 4;
        break;
      case WIRE_LENGTH_DELIMITED: {
        const len = Number(readVarint());
        if (pos + len > buf.length) throw new ProtobufDecodeError('truncated length-delimited field');
        fields.set(field, buf.subarray(pos, pos + len));
        pos += len;
        break;
      }
      default:
        throw new ProtobufDecodeError(`unsupported wire type ${wire} for field ${field}`);
    }
  }
  return fields;
}

export function varintField(fields: Map<number, FieldValue>, n: number): bigint | undefined {
  const v = fields.get(n);
  if (v === undefined) return undefined;
  if (typeof v !== 'bigint') throw new ProtobufDecodeError(`field ${n} is not a varint`);
  return v;
}

export function bytesField(fields: Map<number, FieldValue>, n: number): Uint8Array | undefined {
  const v = fields.get(n);
  if (v === undefined) return undefined;
  if (typeof v === 'bigint') throw new ProtobufDecodeError(`field ${n} is not length-delimited`);
  return v;
}

/** Appends a varint field (key, then value) to out: what protobuf-c writes for uint32/uint64/bool. */
export function encodeVarintField(out: number[], field: number, value: number): void {
  pushVarint(out, field << 3 | WIRE_VARINT);
  pushVarint(out, value);
}

function pushVarint(out: number[], value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new ProtobufDecodeError(`cannot encode ${value} as a varint`);
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}
