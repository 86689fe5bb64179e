// Writer journals (docs/FORMAT.md, "Writer journals"): before a process creates a pack or
// starts deleting packs, it notes their names in a journal of its own, named after its pid
// and start time. Crash recovery deletes a listed pack only when the journal's process is
// provably dead and the index (caught up with the checkpoint objects) does not name the
// pack: a pack is never deleted merely for being unknown to the index.
import { appendFileSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { procStat } from '../sys/proc.js';
import { ensureDirDurable } from './durable.js';
import { WRITERS_DIR } from './format.js';

const JOURNAL_NAME = /^(\d+)-(\d+)-[0-9a-f]{12}\.journal$/;
const PACK_LINE = /^[0-9a-f]{32}$/;

/** This process's start time, read once: with the pid it names this process for good. */
let ownStartTime: number | undefined;

export class WriterJournal {
  private path: string | undefined;

  constructor(private readonly storeDir: string) {}

  /** Notes a pack this writer is about to create (or delete): until close(), it is this writer's to clean up. */
  note(pack: string): void {
    if (!this.path) {
      ownStartTime ??= procStat(process.pid)!.startTicks;
      const dir = join(this.storeDir, WRITERS_DIR);
      ensureDirDurable(dir);
      this.path = join(dir, `${process.pid}-${ownStartTime}-${randomBytes(6).toString('hex')}.journal`);
    }
    // No fsync: a lost line only leaves a pack behind, it never makes recovery delete one.
    appendFileSync(this.path, `${pack}\n`, { mode: 0o600 });
  }

  /** The writer's packs are committed or removed: nothing of it is left to clean up. */
  close(): void {
    if (this.path) rmSync(this.path, { force: true });
    this.path = undefined;
  }
}

export interface DeadJournal {
  path: string;
  packs: string[];
}

/** Journals whose process is gone (or is another process by now: a reused pid starts later). */
export function deadWriterJournals(storeDir: string): DeadJournal[] {
  let names: string[];
  try {
    names = readdirSync(join(storeDir, WRITERS_DIR));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: DeadJournal[] = [];
  for (const name of names) {
    const m = JOURNAL_NAME.exec(name);
    if (!m) continue;
    const stat = procStat(Number(m[1]));
    if (stat && stat.startTicks === Number(m[2]) && stat.state !== 'Z' && stat.state !== 'X') continue;
    const path = join(storeDir, WRITERS_DIR, name);
    const packs = readFileSync(path, 'utf8').split('\n').filter((l) => PACK_LINE.test(l));
    out.push({ path, packs });
  }
  return out;
}
