// The SQLite index of a store (docs/FORMAT.md, "index.sqlite"). Version 1.
export const SCHEMA_V1 = `
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value BLOB NOT NULL
);
CREATE TABLE packs (
  id         INTEGER PRIMARY KEY,
  name       TEXT NOT NULL UNIQUE,
  bytes      INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE chunks (
  id            BLOB PRIMARY KEY,
  pack          INTEGER NOT NULL REFERENCES packs(id),
  offset        INTEGER NOT NULL,
  stored_length INTEGER NOT NULL,
  raw_length    INTEGER NOT NULL,
  compression   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE jobs (
  name           TEXT PRIMARY KEY,
  created_at     INTEGER NOT NULL,
  command        TEXT NOT NULL,
  cwd            TEXT NOT NULL,
  pid            INTEGER,
  controller_pid INTEGER,
  state          TEXT NOT NULL,
  updated_at     INTEGER NOT NULL
);
CREATE TABLE checkpoints (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  job          TEXT NOT NULL REFERENCES jobs(name),
  kind         TEXT NOT NULL CHECK (kind IN ('checkpoint', 'pre-restore')),
  taken_at     INTEGER NOT NULL,
  mode         TEXT NOT NULL CHECK (mode IN ('full', 'incremental', 'files')),
  root_pid     INTEGER,
  image_bytes  INTEGER NOT NULL,
  stored_bytes INTEGER NOT NULL,
  pages_total  INTEGER NOT NULL,
  pages_hashed INTEGER NOT NULL,
  pages_clean  INTEGER NOT NULL,
  duration_ms  REAL NOT NULL,
  freeze_ms    REAL NOT NULL,
  note         TEXT
);
CREATE INDEX checkpoints_by_job_time ON checkpoints (job, taken_at);
CREATE TABLE files (
  checkpoint        INTEGER NOT NULL REFERENCES checkpoints(id),
  role              TEXT NOT NULL CHECK (role IN ('image', 'job-file')),
  path              TEXT NOT NULL,
  size              INTEGER NOT NULL,
  mode              INTEGER NOT NULL,
  uid               INTEGER NOT NULL,
  gid               INTEGER NOT NULL,
  block_bytes       INTEGER NOT NULL,
  manifest          BLOB NOT NULL,
  manifest_indirect INTEGER NOT NULL,
  identity          TEXT,
  PRIMARY KEY (checkpoint, role, path)
);
`;

/**
 * Changes after version 1, oldest first: a store of an older version is brought up to
 * date on open, each step in the same transaction as its new format_version.
 */
export const SCHEMA_MIGRATIONS: { version: number; sql: string }[] = [
  {
    // Version 2: retention policies per job; the GC generation that long-lived
    // controllers compare before each checkpoint (docs/FORMAT.md, "Garbage collection").
    version: 2,
    sql: `
CREATE TABLE retention (
  job    TEXT PRIMARY KEY,
  policy TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('gc_generation', '0');
`,
  },
  {
    // Version 3: the jobs a daemon manages, with their schedules (docs/FORMAT.md, "managed_jobs").
    version: 3,
    sql: `
CREATE TABLE IF NOT EXISTS managed_jobs (
  job           TEXT PRIMARY KEY REFERENCES jobs(name),
  origin        TEXT NOT NULL CHECK (origin IN ('run', 'attach')),
  interval_ms   INTEGER NOT NULL,
  tracking      INTEGER NOT NULL,
  state         TEXT NOT NULL CHECK (state IN ('active', 'exited', 'dead')),
  ended         TEXT,
  registered_at INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
);
`,
  },
  {
    // Version 4: packs and checkpoint objects are the truth, the index a cache of them
    // (docs/FORMAT.md). Chunks found damaged or missing are quarantined (never built on
    // again); checkpoints found to need them are marked damaged; forgotten checkpoints
    // are remembered until their objects are deleted.
    version: 4,
    sql: `
CREATE TABLE IF NOT EXISTS quarantine (
  id       BLOB PRIMARY KEY,
  found_at INTEGER NOT NULL,
  problem  TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS damaged (
  checkpoint INTEGER NOT NULL,
  chunk      BLOB NOT NULL,
  problem    TEXT NOT NULL,
  found_at   INTEGER NOT NULL,
  PRIMARY KEY (checkpoint, chunk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS damaged_by_chunk ON damaged (chunk);
CREATE TABLE IF NOT EXISTS forgotten (
  id INTEGER PRIMARY KEY
);
`,
  },
  {
    // Version 5: the chunk index is runs in chunk-index/ (docs/FORMAT.md, "The chunk
    // index"), listed here; the chunks table (one row per chunk) goes, its rows made runs
    // first (Repository.chunkRowsToRuns).
    version: 5,
    sql: `
CREATE TABLE IF NOT EXISTS index_runs (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  name       TEXT NOT NULL UNIQUE,
  entries    INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
DROP TABLE IF EXISTS chunks;
`,
  },
];
