// A pack and its chunk table written side by side (src/store/pack.ts): the .idx that the
// writer streamed must equal the table read back from the pack's own blob headers, over
// several of the table's buffered writes; an abandoned pack leaves neither file.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CHUNK_ID_BYTES, Compression, PACK_INDEX_SUFFIX } from '../../src/store/format.js';
import { WriterJournal } from '../../src/store/journal.js';
import { decodePackIndex, encodePackIndex } from '../../src/store/objects.js';
import { packPath, packTablePath, PackWriter } from '../../src/store/pack.js';
import { readPackTable } from '../../src/store/pack-table.js';

describe('a pack writer', () => {
  const dir = mkdtempSync('/tmp/crinc-pack-writer-');
  mkdirSync(join(dir, 'packs'), { mode: 0o700 });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('streams a chunk table equal to the one its blob headers give', () => {
    const journal = new WriterJournal(dir);
    const pack = new PackWriter(dir, journal);
    // More entries than one buffered table write holds (32 Ki), with data of varied sizes.
    const count = 70_001;
    const ids = new Uint8Array(randomBytes(count * CHUNK_ID_BYTES));
    const data = new Uint8Array(randomBytes(300));
    for (let i = 0; i < count; i++) {
      const stored = 1 + (i % 300);
      pack.add(ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), data.subarray(0, stored), 4096 - (i % 7), i % 2 === 0 ? Compression.Lz4 : Compression.None);
    }
    expect(pack.count).toBe(count);
    pack.finish();
    journal.close();

    const tablePath = packTablePath(dir, pack.name);
    expect(readdirSync(dirname(tablePath)).sort()).toEqual([`${pack.name}.idx`, `${pack.name}.pack`]);
    const streamed = readFileSync(tablePath);
    const decoded = decodePackIndex(streamed, tablePath);
    expect(decoded.packBytes).toBe(pack.bytes);
    expect(decoded.chunks.count).toBe(count);
    expect(Buffer.from(decoded.chunks.ids).subarray(0, count * CHUNK_ID_BYTES).equals(Buffer.from(ids))).toBe(true);

    // Without its .idx, the pack's blob headers are scanned: the same table, byte for byte.
    renameSync(tablePath, `${tablePath}.aside`);
    const scanned = readPackTable(dir, pack.name);
    renameSync(`${tablePath}.aside`, tablePath);
    expect(scanned.ok).toBe(true);
    if (!scanned.ok) return;
    expect(encodePackIndex(scanned.chunks, scanned.bytes).equals(streamed)).toBe(true);
  });

  it('leaves nothing of an abandoned pack, finished or not', () => {
    for (const finish of [false, true]) {
      const journal = new WriterJournal(dir);
      const pack = new PackWriter(dir, journal);
      pack.add(new Uint8Array(randomBytes(CHUNK_ID_BYTES)), new Uint8Array(10), 4096, Compression.None);
      if (finish) pack.finish();
      pack.abandon();
      journal.close();
      const near = readdirSync(dirname(packPath(dir, pack.name))).filter((f) => f.startsWith(pack.name));
      expect(near, `finished: ${finish}`).toEqual([]);
      expect(existsSync(join(dir, 'packs', pack.name.slice(0, 2), `${pack.name}${PACK_INDEX_SUFFIX}`))).toBe(false);
    }
  });
});
