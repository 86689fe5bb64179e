/**
 * crinc's own typed binding of the libbpf calls it needs (libbpf.so.1, 1.1 or newer),
 * through koffi: open, load and attach a BPF object, find its programs and maps,
 * update / delete / look up map entries, batch-drain hash maps, consume ring buffers,
 * and read struct and enum layouts from the object's BTF.
 *
 * Every failure is a typed error that names the call, the errno (as a name) and what
 * libbpf printed while the call ran (for a load failure: the verifier's log).
 */
import koffi from 'koffi';
import { constants as osConstants } from 'node:os';

// ---- errors --------------------------------------------------------------------------

/** Name of an errno value ("ENOENT"), or "errno N" when it has no name here. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** libbpf's own error codes (enum libbpf_errno in libbpf.h), above the system's. */
const LIBBPF_ERRNOS: [number, string][] = [
  [4000, 'LIBBPF_ERRNO__LIBELF (libelf failed)'],
  [4001, 'LIBBPF_ERRNO__FORMAT (not a BPF ELF object)'],
  [4002, 'LIBBPF_ERRNO__KVERSION (kernel version missing)'],
  [4003, 'LIBBPF_ERRNO__ENDIAN (wrong byte order)'],
  [4004, 'LIBBPF_ERRNO__INTERNAL (libbpf internal error)'],
  [4005, 'LIBBPF_ERRNO__RELOC (relocation failed)'],
  [4006, 'LIBBPF_ERRNO__LOAD (load failed)'],
  [4007, 'LIBBPF_ERRNO__VERIFY (the verifier refused a program)'],
  [4008, 'LIBBPF_ERRNO__PROG2BIG (program too big)'],
  [4009, 'LIBBPF_ERRNO__KVER (wrong kernel version)'],
  [4010, 'LIBBPF_ERRNO__PROGTYPE (program type not supported by this kernel)'],
  [4011, 'LIBBPF_ERRNO__WRNGPID (wrong pid in netlink message)'],
  [4012, 'LIBBPF_ERRNO__INVSEQ (invalid netlink sequence)'],
  [4013, 'LIBBPF_ERRNO__NLPARSE (netlink parse error)'],
];

const ERRNO_NAMES = new Map<number, string>([
  ...Object.entries(osConstants.errno).map(([name, value]) => [value, name] as [number, string]),
  ...LIBBPF_ERRNOS,
]);

/** Lines of libbpf's log kept in an error's message (all of them are in `.log`). */
const LOG_LINES_IN_MESSAGE = 40;

export class BpfError extends Error {
  override name = 'BpfError';
}

/** A libbpf call failed with an errno. */
export class LibbpfCallError extends BpfError {
  override name = 'LibbpfCallError';
  readonly errnoName: string;
  constructor(
    readonly call: string,
    readonly errno: number,
    /** What libbpf printed while the call ran. */
    readonly log: readonly string[],
    what: string,
  ) {
    const shown = log.slice(-LOG_LINES_IN_MESSAGE);
    const omitted = log.length - shown.length;
    super(
      `${what}: ${call} failed with ${errnoName(errno)}` +
        (errno === osConstants.errno.EPERM ? ' (loading BPF programs needs root, or CAP_BPF and CAP_PERFMON)' : '') +
        (shown.length ? `\nlibbpf said${omitted ? ` (last ${shown.length} of ${log.length} lines)` : ''}:\n${shown.join('\n')}` : ''),
    );
    this.errnoName = errnoName(errno);
  }
}

export class BpfObjectOpenError extends LibbpfCallError {
  override name = 'BpfObjectOpenError';
}

/** The kernel refused a program or map of the object; the verifier log is in `.log`. */
export class BpfLoadError extends LibbpfCallError {
  override name = 'BpfLoadError';
}

export class BpfAttachError extends LibbpfCallError {
  override name = 'BpfAttachError';
}

export class BpfMapError extends LibbpfCallError {
  override name = 'BpfMapError';
}

export class RingBufferError extends LibbpfCallError {
  override name = 'RingBufferError';
}

/** A program, map or BTF type the caller asked for is not in the object. */
export class BpfNotFoundError extends BpfError {
  override name = 'BpfNotFoundError';
}

/** A handle was used after its close() or destroy(). */
export class BpfClosedError extends BpfError {
  override name = 'BpfClosedError';
}

// ---- the library -----------------------------------------------------------------------

const LIBBPF_SONAME = 'libbpf.so.1';

function loadLibbpf(): ReturnType<typeof koffi.load> {
  try {
    return koffi.load(LIBBPF_SONAME);
  } catch (error) {
    throw new BpfError(`cannot load ${LIBBPF_SONAME}: install libbpf (Debian: libbpf1, with libbpf-dev to build crinc's BPF objects)`, { cause: error });
  }
}

const lib = loadLibbpf();
const libc = koffi.load('libc.so.6');

koffi.opaque('bpf_object');
koffi.opaque('bpf_program');
koffi.opaque('bpf_map');
koffi.opaque('bpf_link');
koffi.opaque('ring_buffer');
koffi.opaque('btf');

const RingBufferSample = koffi.proto('int crinc_ring_buffer_sample(void *ctx, void *data, size_t size)');
// va_list is passed as a pointer on x86-64 and arm64 alike; it goes on to vsnprintf.
const LibbpfPrint = koffi.proto('int crinc_libbpf_print(int level, const char *format, void *args)');

const fn = {
  objectOpenFile: lib.func('bpf_object *bpf_object__open_file(const char *path, const void *opts)'),
  objectLoad: lib.func('int bpf_object__load(bpf_object *obj)'),
  objectClose: lib.func('void bpf_object__close(bpf_object *obj)'),
  objectFindProgram: lib.func('bpf_program *bpf_object__find_program_by_name(const bpf_object *obj, const char *name)'),
  objectFindMap: lib.func('bpf_map *bpf_object__find_map_by_name(const bpf_object *obj, const char *name)'),
  objectBtf: lib.func('btf *bpf_object__btf(const bpf_object *obj)'),
  programAttach: lib.func('bpf_link *bpf_program__attach(const bpf_program *prog)'),
  linkDestroy: lib.func('int bpf_link__destroy(bpf_link *link)'),
  mapFd: lib.func('int bpf_map__fd(const bpf_map *map)'),
  mapName: lib.func('const char *bpf_map__name(const bpf_map *map)'),
  mapType: lib.func('int bpf_map__type(const bpf_map *map)'),
  mapKeySize: lib.func('uint32_t bpf_map__key_size(const bpf_map *map)'),
  mapValueSize: lib.func('uint32_t bpf_map__value_size(const bpf_map *map)'),
  mapMaxEntries: lib.func('uint32_t bpf_map__max_entries(const bpf_map *map)'),
  mapUpdate: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  mapLookup: lib.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
  mapDelete: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  mapLookupBatch: lib.func('int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, uint32_t *count, const void *opts)'),
  mapLookupAndDeleteBatch: lib.func('int bpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, uint32_t *count, const void *opts)'),
  ringBufferNew: lib.func('ring_buffer *ring_buffer__new(int map_fd, crinc_ring_buffer_sample *sample_cb, void *ctx, const void *opts)'),
  ringBufferConsume: lib.func('int ring_buffer__consume(ring_buffer *rb)'),
  ringBufferFree: lib.func('void ring_buffer__free(ring_buffer *rb)'),
  numPossibleCpus: lib.func('int libbpf_num_possible_cpus(void)'),
  setPrint: lib.func('void *libbpf_set_print(crinc_libbpf_print *fn)'),
  btfFindByNameKind: lib.func('int32_t btf__find_by_name_kind(const btf *btf, const char *name, uint32_t kind)'),
  btfTypeById: lib.func('const void *btf__type_by_id(const btf *btf, uint32_t id)'),
  btfNameByOffset: lib.func('const char *btf__name_by_offset(const btf *btf, uint32_t offset)'),
  btfResolveSize: lib.func('int64_t btf__resolve_size(const btf *btf, uint32_t id)'),
  vsnprintf: libc.func('int vsnprintf(uint8_t *buf, size_t size, const char *format, void *args)'),
  memcpy: libc.func('void *memcpy(uint8_t *dst, const void *src, size_t n)'),
};

// ---- libbpf's log ---------------------------------------------------------------------

/** libbpf_print_level */
const LIBBPF_DEBUG = 2;
/** One formatted libbpf message at most; longer ones are cut. */
const LIBBPF_MESSAGE_BYTES = 4096;
/** Lines kept of what libbpf prints during one call (a verifier log can be huge). */
const LIBBPF_LOG_LINES_KEPT = 2000;

const messageBuffer = Buffer.alloc(LIBBPF_MESSAGE_BYTES);
let callLog: string[] = [];

function onLibbpfPrint(level: number, format: string, args: unknown): number {
  if (level >= LIBBPF_DEBUG) return 0;
  const length = fn.vsnprintf(messageBuffer, messageBuffer.length, format, args) as number;
  const text = messageBuffer.toString('utf8', 0, Math.max(0, Math.min(length, messageBuffer.length - 1)));
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (callLog.length >= LIBBPF_LOG_LINES_KEPT) callLog.shift();
    callLog.push(line);
  }
  return 0;
}

// libbpf prints to stderr by default; its messages belong in our errors instead.
// Registered once per process and never unregistered: libbpf keeps the pointer.
fn.setPrint(koffi.register(onLibbpfPrint, koffi.pointer(LibbpfPrint)));

/** Runs one libbpf call with a fresh log, returning the call's result and its log. */
function logged<T>(call: () => T): { result: T; log: string[]; errno: number } {
  callLog = [];
  koffi.errno(0);
  const result = call();
  const errno = koffi.errno();
  const log = callLog;
  callLog = [];
  return { result, log, errno };
}

// ---- objects, programs, links ------------------------------------------------------------

type Pointer = unknown;

export class BpfObject {
  private handle: Pointer | null;

  private constructor(
    handle: Pointer,
    readonly path: string,
  ) {
    this.handle = handle;
  }

  /** Opens (parses) an object file; nothing is loaded into the kernel yet. */
  static openFile(path: string): BpfObject {
    const { result, log, errno } = logged(() => fn.objectOpenFile(path, null));
    if (result === null) throw new BpfObjectOpenError('bpf_object__open_file', errno, log, `cannot open BPF object ${path}`);
    return new BpfObject(result, path);
  }

  private get live(): Pointer {
    if (this.handle === null) throw new BpfClosedError(`BPF object ${this.path} is closed`);
    return this.handle;
  }

  /** Creates the maps and loads every program (CO-RE relocated, verified). */
  load(): void {
    const { result, log } = logged(() => fn.objectLoad(this.live) as number);
    if (result < 0) throw new BpfLoadError('bpf_object__load', -result, log, `the kernel refused BPF object ${this.path}`);
  }

  program(name: string): BpfProgram {
    const program = fn.objectFindProgram(this.live, name);
    if (program === null) throw new BpfNotFoundError(`BPF object ${this.path} has no program "${name}"`);
    return new BpfProgram(program, name);
  }

  map(name: string): BpfMap {
    const map = fn.objectFindMap(this.live, name);
    if (map === null) throw new BpfNotFoundError(`BPF object ${this.path} has no map "${name}"`);
    return new BpfMap(map);
  }

  /** The object's own BTF (its types, as compiled), for layout checks. */
  btf(): Btf {
    const btf = fn.objectBtf(this.live);
    if (btf === null) throw new BpfNotFoundError(`BPF object ${this.path} has no BTF: build it with clang -g`);
    return new Btf(btf, this.path);
  }

  /** Unloads programs and maps. Links must be destroyed first. Idempotent. */
  close(): void {
    if (this.handle === null) return;
    fn.objectClose(this.handle);
    this.handle = null;
  }
}

export class BpfProgram {
  constructor(
    private readonly handle: Pointer,
    readonly name: string,
  ) {}

  /** Attaches the loaded program where its section name says (tp_btf/…, raw_tp/…). */
  attach(): BpfLink {
    const { result, log, errno } = logged(() => fn.programAttach(this.handle));
    if (result === null) throw new BpfAttachError('bpf_program__attach', errno, log, `cannot attach BPF program ${this.name}`);
    return new BpfLink(result, this.name);
  }
}

export class BpfLink {
  private handle: Pointer | null;

  constructor(
    handle: Pointer,
    readonly programName: string,
  ) {
    this.handle = handle;
  }

  /** Detaches the program. Idempotent. */
  destroy(): void {
    if (this.handle === null) return;
    const { result, log } = logged(() => fn.linkDestroy(this.handle) as number);
    this.handle = null;
    if (result < 0) throw new BpfAttachError('bpf_link__destroy', -result, log, `cannot detach BPF program ${this.programName}`);
  }
}

// ---- maps ----------------------------------------------------------------------------

/** bpf_map_update_elem flags */
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

/** enum bpf_map_type values this binding treats specially. */
const PER_CPU_MAP_TYPES = new Set([5 /* PERCPU_HASH */, 6 /* PERCPU_ARRAY */, 10 /* LRU_PERCPU_HASH */, 21 /* PERCPU_CGROUP_STORAGE */]);

/** Entries asked for per batch call when draining a map. */
const BATCH_ENTRIES = 8192;

/** Keys and values read from a map, packed: entry i at i * keySize / i * valueSize. */
export interface MapEntries {
  count: number;
  keys: Buffer;
  values: Buffer;
}

let possibleCpus: number | undefined;

function numPossibleCpus(): number {
  if (possibleCpus === undefined) {
    const n = fn.numPossibleCpus() as number;
    if (n <= 0) throw new LibbpfCallError('libbpf_num_possible_cpus', -n, [], 'cannot count CPUs');
    possibleCpus = n;
  }
  return possibleCpus;
}

export class BpfMap {
  readonly name: string;
  readonly fd: number;
  readonly keySize: number;
  /** Bytes of one value as user space sees it: per-CPU maps hold one 8-aligned slot per possible CPU. */
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly perCpu: boolean;

  constructor(handle: Pointer) {
    this.name = fn.mapName(handle) as string;
    this.fd = fn.mapFd(handle) as number;
    if (this.fd < 0) throw new BpfMapError('bpf_map__fd', -this.fd, [], `map ${this.name} is not created: load the object first`);
    this.keySize = fn.mapKeySize(handle) as number;
    this.maxEntries = fn.mapMaxEntries(handle) as number;
    this.perCpu = PER_CPU_MAP_TYPES.has(fn.mapType(handle) as number);
    const declared = fn.mapValueSize(handle) as number;
    this.valueSize = this.perCpu ? Math.ceil(declared / 8) * 8 * numPossibleCpus() : declared;
  }

  private check(call: string, result: number, what: string): void {
    if (result < 0) throw new BpfMapError(call, -result, [], `map ${this.name}: ${what}`);
  }

  update(key: Buffer, value: Buffer, flags = BPF_ANY): void {
    this.checkSizes(key, value);
    this.check('bpf_map_update_elem', fn.mapUpdate(this.fd, key, value, flags) as number, 'cannot store an entry');
  }

  /** Copies the value of key into value; false when there is none. */
  lookup(key: Buffer, value: Buffer): boolean {
    this.checkSizes(key, value);
    const result = fn.mapLookup(this.fd, key, value) as number;
    if (result === -osConstants.errno.ENOENT) return false;
    this.check('bpf_map_lookup_elem', result, 'cannot look up an entry');
    return true;
  }

  /** Deletes key; false when there was no such entry. */
  delete(key: Buffer): boolean {
    if (key.length !== this.keySize) throw new BpfError(`map ${this.name}: key of ${key.length} bytes, expected ${this.keySize}`);
    const result = fn.mapDelete(this.fd, key) as number;
    if (result === -osConstants.errno.ENOENT) return false;
    this.check('bpf_map_delete_elem', result, 'cannot delete an entry');
    return true;
  }

  /** Every entry, read in batches; with remove, each batch is deleted as it is read. */
  readAll(remove: boolean): MapEntries {
    const call = remove ? fn.mapLookupAndDeleteBatch : fn.mapLookupBatch;
    const callName = remove ? 'bpf_map_lookup_and_delete_batch' : 'bpf_map_lookup_batch';
    // Hash maps take a u32 bucket cursor; array maps a key. 8 bytes covers both here.
    const tokenSize = Math.max(8, this.keySize);
    const inToken = Buffer.alloc(tokenSize);
    const outToken = Buffer.alloc(tokenSize);
    let batchEntries = Math.min(BATCH_ENTRIES, this.maxEntries);
    let keys = Buffer.alloc(batchEntries * this.keySize);
    let values = Buffer.alloc(batchEntries * this.valueSize);
    const keyChunks: Buffer[] = [];
    const valueChunks: Buffer[] = [];
    const count = new Uint32Array(1);
    let total = 0;
    let first = true;
    for (;;) {
      count[0] = batchEntries;
      const result = call(this.fd, first ? null : inToken, outToken, keys, values, count, null) as number;
      const done = result === -osConstants.errno.ENOENT;
      if (result === -osConstants.errno.ENOSPC && count[0] === 0 && batchEntries < this.maxEntries) {
        // A hash bucket holds more entries than the batch: retry it with room for all.
        batchEntries = Math.min(batchEntries * 2, this.maxEntries);
        keys = Buffer.alloc(batchEntries * this.keySize);
        values = Buffer.alloc(batchEntries * this.valueSize);
        continue;
      }
      if (result < 0 && !done) this.check(callName, result, remove ? 'cannot drain entries' : 'cannot read entries');
      if (count[0] > 0) {
        keyChunks.push(Buffer.from(keys.subarray(0, count[0] * this.keySize)));
        valueChunks.push(Buffer.from(values.subarray(0, count[0] * this.valueSize)));
        total += count[0];
      }
      if (done) break;
      outToken.copy(inToken);
      first = false;
    }
    return { count: total, keys: Buffer.concat(keyChunks), values: Buffer.concat(valueChunks) };
  }

  private checkSizes(key: Buffer, value: Buffer): void {
    if (key.length !== this.keySize || value.length !== this.valueSize) {
      throw new BpfError(`map ${this.name}: key/value of ${key.length}/${value.length} bytes, expected ${this.keySize}/${this.valueSize}`);
    }
  }
}

// ---- ring buffers ------------------------------------------------------------------------

/** Called for each record with a view of its bytes, valid only during the call. */
export type RingBufferSampleHandler = (record: DataView) => void;

/** Starting size of the buffer records are copied into; it grows to the largest record. */
const RECORD_BUFFER_BYTES = 1024;

export class RingBuffer {
  private handle: Pointer | null;
  private callback: bigint | null;
  private sampleError: unknown = undefined;

  private constructor(
    readonly mapName: string,
    handle: Pointer,
    callback: bigint,
  ) {
    this.handle = handle;
    this.callback = callback;
  }

  /**
   * A consumer of a BPF_MAP_TYPE_RINGBUF map. Records are handed to onSample only from
   * consume(), on the calling thread.
   */
  static open(map: BpfMap, onSample: RingBufferSampleHandler): RingBuffer {
    let self: RingBuffer | undefined;
    // Each record is copied into one reused buffer: a koffi.view of ring memory per
    // record costs ~2.5 µs (an external ArrayBuffer each), the copy ~0.1 µs.
    let record = Buffer.alloc(RECORD_BUFFER_BYTES);
    let view = new DataView(record.buffer, record.byteOffset, record.byteLength);
    const sample = (_ctx: unknown, data: unknown, size: number | bigint): number => {
      try {
        const length = Number(size);
        if (length > record.length) {
          record = Buffer.alloc(length);
          view = new DataView(record.buffer, record.byteOffset, record.byteLength);
        }
        fn.memcpy(record, data, length);
        onSample(new DataView(view.buffer, view.byteOffset, length));
        return 0;
      } catch (error) {
        // A negative return stops ring_buffer__consume; consume() rethrows this.
        if (self) self.sampleError = error;
        return -1;
      }
    };
    const callback = koffi.register(sample, koffi.pointer(RingBufferSample));
    const { result, log, errno } = logged(() => fn.ringBufferNew(map.fd, callback, null, null));
    if (result === null) {
      koffi.unregister(callback);
      throw new RingBufferError('ring_buffer__new', errno, log, `cannot open ring buffer ${map.name}`);
    }
    self = new RingBuffer(map.name, result, callback);
    return self;
  }

  /** Hands every record available now to the handler; returns how many. */
  consume(): number {
    if (this.handle === null) throw new BpfClosedError(`ring buffer ${this.mapName} is closed`);
    const result = fn.ringBufferConsume(this.handle) as number;
    if (this.sampleError !== undefined) {
      const error = this.sampleError;
      this.sampleError = undefined;
      throw error;
    }
    if (result < 0) throw new RingBufferError('ring_buffer__consume', -result, [], `cannot read ring buffer ${this.mapName}`);
    return result;
  }

  /** Idempotent. */
  close(): void {
    if (this.handle !== null) fn.ringBufferFree(this.handle);
    this.handle = null;
    if (this.callback !== null) koffi.unregister(this.callback);
    this.callback = null;
  }
}

// ---- BTF -----------------------------------------------------------------------------

/** BTF_KIND_* values (uapi linux/btf.h). */
const BTF_KIND_ENUM = 6;
const BTF_KIND_STRUCT = 4;
/** struct btf_type is 12 bytes, followed for a struct by vlen btf_member (12 bytes
 * each) and for an enum by vlen btf_enum (8 bytes each). */
const BTF_TYPE_BYTES = 12;
const BTF_MEMBER_BYTES = 12;
const BTF_ENUM_BYTES = 8;

export interface BtfMember {
  name: string;
  /** Byte offset in the struct. */
  offset: number;
  /** Bytes of the member's type. */
  size: number;
}

export interface BtfStruct {
  name: string;
  size: number;
  members: BtfMember[];
}

export class Btf {
  constructor(
    private readonly handle: Pointer,
    private readonly source: string,
  ) {}

  private typeId(name: string, kind: number, what: string): number {
    const id = fn.btfFindByNameKind(this.handle, name, kind) as number;
    if (id < 0) throw new BpfNotFoundError(`the BTF of ${this.source} has no ${what} ${name}`);
    return id;
  }

  private header(id: number): { view: DataView; pointer: unknown; vlen: number; kindFlag: boolean; size: number } {
    const pointer = fn.btfTypeById(this.handle, id);
    const header = new DataView(koffi.view(pointer, BTF_TYPE_BYTES));
    const info = header.getUint32(4, true);
    return { view: header, pointer, vlen: info & 0xffff, kindFlag: (info >>> 31) === 1, size: header.getUint32(8, true) };
  }

  structLayout(name: string): BtfStruct {
    const id = this.typeId(name, BTF_KIND_STRUCT, 'struct');
    const { pointer, vlen, kindFlag, size } = this.header(id);
    const all = new DataView(koffi.view(pointer, BTF_TYPE_BYTES + vlen * BTF_MEMBER_BYTES));
    const members: BtfMember[] = [];
    for (let i = 0; i < vlen; i++) {
      const at = BTF_TYPE_BYTES + i * BTF_MEMBER_BYTES;
      const memberName = fn.btfNameByOffset(this.handle, all.getUint32(at, true)) as string;
      const type = all.getUint32(at + 4, true);
      const rawOffset = all.getUint32(at + 8, true);
      const bitOffset = kindFlag ? rawOffset & 0xffffff : rawOffset;
      if (bitOffset % 8 !== 0) throw new BpfError(`struct ${name} in ${this.source}: member ${memberName} is a bit field, not supported in event layouts`);
      const memberSize = Number(fn.btfResolveSize(this.handle, type) as number | bigint);
      members.push({ name: memberName, offset: bitOffset / 8, size: memberSize });
    }
    return { name, size, members };
  }

  enumValues(name: string): Map<string, number> {
    const id = this.typeId(name, BTF_KIND_ENUM, 'enum');
    const { pointer, vlen } = this.header(id);
    const all = new DataView(koffi.view(pointer, BTF_TYPE_BYTES + vlen * BTF_ENUM_BYTES));
    const values = new Map<string, number>();
    for (let i = 0; i < vlen; i++) {
      const at = BTF_TYPE_BYTES + i * BTF_ENUM_BYTES;
      values.set(fn.btfNameByOffset(this.handle, all.getUint32(at, true)) as string, all.getInt32(at + 4, true));
    }
    return values;
  }
}
