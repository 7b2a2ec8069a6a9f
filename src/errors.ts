/**
 * The one error module. Every error dmthin throws is a DmthinError with Node's
 * SystemError shape (`code`, negative `errno`, `syscall`, `path`) plus domain
 * fields (device, block, tree, message...). `code` is the stable identifier.
 */
// Node's table lacks a few Linux codes the kernel uses for metadata faults.
// Made on first use: node:os is not loaded by a run that makes no error.
let errnoTable: Record<string, number> | undefined;
const ERRNO = (): Record<string, number> =>
  (errnoTable ??= { ENOTBLK: 15, EUCLEAN: 117, ...((require('node:os') as typeof import('node:os')).constants.errno as unknown as Record<string, number>) });

/** Negative errno for a code, as Node reports it (`EBUSY` -> -16), or undefined. */
export function errnoOf(code: string): number | undefined {
  const n = ERRNO()[code];
  return typeof n === 'number' ? -n : undefined;
}

/** Code for a (positive or negative) errno number, e.g. 16 -> 'EBUSY'. */
export function codeOfErrno(errno: number): string {
  const n = Math.abs(errno);
  for (const [k, v] of Object.entries(ERRNO())) if (v === n) return k;
  return 'EUNKNOWN';
}

/** Optional fields of a DmthinError, given to its constructor. */
export interface ErrorFields {
  /** Negative errno (derived from the code when left out). */
  errno?: number;
  /** The system call that failed (`open`, `ioctl`...). */
  syscall?: string;
  /** The file or device the error is about. */
  path?: string;
  /** dm device name or thin-pool name. */
  device?: string;
  /** Metadata (or data) block number the problem is about. */
  block?: number;
  /** The underlying error, kept as Error#cause. */
  cause?: unknown;
  [extra: string]: unknown;
}

/** The base of every error dmthin throws: Node's SystemError shape plus domain fields. */
export class DmthinError extends Error {
  /** Stable identifier: an errno name (`EBUSY`, `EUCLEAN`...) or `ABORT_ERR`. */
  readonly code: string;
  // `declare`: no class-field initialisers, which would overwrite what the
  // constructor copies in from `fields` (ES2022 define semantics).
  /** Negative errno, as Node reports it (`EBUSY` -> -16), where one applies. */
  declare errno?: number;
  /** The system call that failed, for system-call errors. */
  declare syscall?: string;
  /** The file or device the error is about. */
  declare path?: string;
  /** dm device name or thin-pool name. */
  declare device?: string;
  /** Metadata (or data) block number the problem is about. */
  declare block?: number;

  constructor(code: string, message: string, fields: ErrorFields = {}) {
    super(message, fields.cause !== undefined ? { cause: fields.cause } : undefined);
    this.code = code;
    const { cause: _cause, ...rest } = fields;
    Object.assign(this, rest);
    if (this.errno === undefined) {
      const e = errnoOf(code);
      if (e !== undefined) this.errno = e;
    }
  }

  /** The class name (`MetadataError`...), as Node's errors report it. */
  override get name(): string {
    return this.constructor.name;
  }
}

/** An operating-system call failed (open, preadv, ioctl...). */
export class SystemCallError extends DmthinError {}

/**
 * A device-mapper ioctl failed. `ioctl` is the command (`DM_TARGET_MSG`...),
 * `device` the name/uuid/`major:minor` it was about, and for DM_TARGET_MSG
 * `targetMessage` is the text that was sent (the kernel's reason only reaches
 * dmesg, so the errno plus the message is all a caller gets).
 * `targetMessage` rather than `message`: Error#message stays the human text.
 */
export class DmIoctlError extends SystemCallError {
  /** The dm ioctl that failed (`DM_DEV_CREATE`, `DM_TARGET_MSG`...). */
  readonly ioctl: string;
  /** For DM_TARGET_MSG: the message text the kernel refused. */
  declare targetMessage?: string; // declare: a class field would reset what super() assigned

  constructor(code: string, message: string, fields: ErrorFields & { ioctl: string; targetMessage?: string }) {
    super(code, message, { syscall: 'ioctl', ...fields });
    this.ioctl = fields.ioctl;
  }
}

/** Kernel output (an ioctl result or a target's status/table line) did not
 * have the expected shape. `input` is the offending text, when there is one. */
export class DmParseError extends DmthinError {
  /** The kernel output that did not parse. */
  declare input?: string;

  constructor(message: string, fields: ErrorFields & { input?: string } = {}) {
    super('EPROTO', message, fields);
  }
}

/**
 * Why metadata was judged corrupt. Stable strings: tests and callers may match
 * on them.
 */
export type CorruptionKind =
  | 'checksum' // CRC mismatch
  | 'block-type' // valid checksum, but of another block type
  | 'blocknr' // block says it lives elsewhere
  | 'block-range' // pointer beyond the metadata device
  | 'magic'
  | 'version'
  | 'block-size'
  | 'feature-flags'
  | 'node-flags'
  | 'max-entries'
  | 'nr-entries'
  | 'value-size'
  | 'key-order'
  | 'key-range'
  | 'depth'
  | 'cycle'
  | 'data-range' // data block beyond the data device
  | 'device-mismatch' // details tree and mapping tree disagree
  | 'mapped-count' // a device's mapping tree holds another number of mappings than its details say
  | 'space-map'
  | 'ref-count'
  | 'truncated' // device smaller than the metadata says
  | 'metadata-snap'; // held root absent or not as requested

/** The metadata is corrupt. `code` follows the kernel: EILSEQ for checksums,
 * ENOTBLK for a wrong block number, EUCLEAN for everything structural. */
export class MetadataError extends DmthinError {
  /** What was found wrong (a stable string). */
  readonly kind: CorruptionKind;
  /** The tree the fault was found in (`details`, `mapping`, a space map...). */
  declare tree?: string;
  /** The thin device whose tree it was, when there is one. */
  declare devId?: number;

  constructor(kind: CorruptionKind, message: string, fields: ErrorFields & { tree?: string; devId?: number } = {}) {
    const code = kind === 'checksum' || kind === 'block-type' ? 'EILSEQ' : kind === 'blocknr' ? 'ENOTBLK' : 'EUCLEAN';
    super(code, message, fields);
    this.kind = kind;
  }
}

/** No metadata snapshot is held, or the one asked for is not the held one. */
export class MetadataSnapError extends DmthinError {}

/**
 * What a pool holds now, said against the snapshot at `block` that was
 * read: `now` the held root now (0 or null: none), `sameCopy` whether the
 * copy at `block` is still the one read.
 */
export function heldNowWords(block: number, now: number | null, sameCopy: boolean): string | null {
  if (!now) return 'none is held now';
  if (now !== block) return Number.isSafeInteger(now) ? `block ${now} is held now` : 'another is held now';
  return sameCopy ? null : 'another is held at the same block now';
}

/**
 * ESTALE: the metadata snapshot at `block` of `whose` ('thin-pool NAME' or
 * a metadata device's path) was released while it was read; `what` says
 * what is held now.
 */
export function snapshotReleased(whose: string, block: number, what: string, fields: ErrorFields): MetadataSnapError {
  const how = fields.device !== undefined ? `'dmsetup message ${fields.device} 0 release_metadata_snap'` : "'dmsetup message POOL 0 release_metadata_snap'";
  return new MetadataSnapError(
    'ESTALE',
    `the metadata snapshot of ${whose} at block ${block} was released while it was being read (${what}), by something other than this reader ` +
      `(such as ${how}): the pool may have reused blocks it named, so what was read is not to be used. ` +
      `Run it again, and keep the snapshot held until it ends`,
    { ...fields, block },
  );
}

/**
 * Why a send/receive stream was refused (docs/stream-format.md). Stable
 * strings: tests and callers may match on them.
 */
export type StreamErrorReason =
  | 'magic' // not a dmthin stream
  | 'version' // a format version this build does not read
  | 'crc' // a record's CRC-32C does not match
  | 'digest' // the end record's SHA-256 does not match the stream
  | 'truncated' // the stream ends before a valid end record
  | 'malformed' // a record's fields are impossible (length, type, range, flags)
  | 'order' // records out of sequence or overlapping
  | 'counts' // the end record's counts disagree with the records
  | 'trailing' // bytes after the end record
  | 'target-size' // the target is smaller than the stream's device
  | 'base-mismatch' // an incremental stream whose base is not what the target holds
  | 'size-changed' // an incremental stream for a device of another size than its base was received at
  | 'state-file' // the target's receive state file is damaged (not JSON, or fields missing or wrong)
  | 'beyond-size' // send: a change lies outside the declared device size
  | 'changed'; // the input changed between verification and apply

const STREAM_CODES: Record<StreamErrorReason, string> = {
  magic: 'EBADMSG',
  version: 'EPROTONOSUPPORT',
  crc: 'EILSEQ',
  digest: 'EILSEQ',
  truncated: 'EBADMSG',
  malformed: 'EBADMSG',
  order: 'EBADMSG',
  counts: 'EBADMSG',
  trailing: 'EBADMSG',
  'target-size': 'ENOSPC',
  'base-mismatch': 'ESTALE',
  'size-changed': 'ESTALE',
  'state-file': 'EUCLEAN',
  'beyond-size': 'ERANGE',
  changed: 'EILSEQ',
};

/**
 * A send/receive stream was refused. `reason` says why; `code` is derived from
 * it (EBADMSG for a damaged or malformed stream, EILSEQ for checksum faults,
 * EPROTONOSUPPORT, ENOSPC, ESTALE, EUCLEAN for a damaged state file, ERANGE
 * when a sender finds a change outside the device). `offset` is the byte offset in the stream
 * and `record` the record's sequence number, where they apply.
 */
export class StreamError extends DmthinError {
  /** Why the stream was refused (a stable string); `code` follows from it. */
  readonly reason: StreamErrorReason;
  /** Byte offset in the stream, where it applies. */
  declare offset?: number;
  /** Sequence number of the record, where it applies. */
  declare record?: number;

  constructor(reason: StreamErrorReason, message: string, fields: ErrorFields & { offset?: number; record?: number } = {}) {
    super(STREAM_CODES[reason], message, fields);
    this.reason = reason;
  }
}

/**
 * Why a merge (docs/merge.md) was refused before it wrote anything, or could
 * not go on. Stable strings: tests and callers may match on them.
 */
export type MergeErrorReason =
  | 'origin-busy' // the external origin is open by someone else (O_EXCL failed)
  | 'origin-read-only' // the external origin is a read-only block device (blockdev --setro, losetup -r)
  | 'origin-shared' // the external origin is the origin of another active thin
  | 'thin-active' // a thin the merge reads or writes is active in a dm table
  | 'beyond-end' // the thin maps blocks beyond the external origin's end
  | 'origin-mismatch' // the origin named is not the one the thin (or an interrupted merge) used
  | 'no-such-thin' // a thin id is not in the pool
  | 'lvm-pool' // the pool is LVM's: its thin ids are not dmthin's to create or delete
  | 'pool-suspended' // the pool is suspended: no thin of it can be activated to copy through
  | 'pool-full' // an in-pool merge would write into a pool that is out of data space
  | 'pool-read-only' // an in-pool merge would write into a pool in read-only mode
  | 'state-file'; // the merge state file is damaged

const MERGE_CODES: Record<MergeErrorReason, string> = {
  'origin-busy': 'EBUSY',
  'origin-read-only': 'EROFS',
  'origin-shared': 'EBUSY',
  'thin-active': 'EBUSY',
  'beyond-end': 'ENOSPC',
  'origin-mismatch': 'EINVAL',
  'no-such-thin': 'ENOENT',
  'lvm-pool': 'EOPNOTSUPP',
  'pool-suspended': 'EBUSY',
  'pool-full': 'ENOSPC',
  'pool-read-only': 'EROFS',
  'state-file': 'EUCLEAN',
};

/**
 * A merge of a snapshot into its origin was refused. `reason` says why;
 * `code` is derived from it (EBUSY: something else uses a device, or the
 * pool is suspended; ENOSPC:
 * the origin is too small, or the pool out of data space; EROFS: the pool
 * or the external origin is read-only; EINVAL: another origin; ENOENT: no such thin;
 * EOPNOTSUPP: an LVM pool; EUCLEAN: a damaged state file).
 */
export class MergeError extends DmthinError {
  /** Why the merge was refused. */
  readonly reason: MergeErrorReason;

  constructor(reason: MergeErrorReason, message: string, fields: ErrorFields = {}) {
    super(MERGE_CODES[reason], message, fields);
    this.reason = reason;
  }
}

/**
 * Why a backup repository (docs/repository.md) refused an operation or found
 * damage. Stable strings: tests and callers may match on them.
 */
export type RepoErrorReason =
  | 'not-found' // an object (chunk, manifest, repository config) is absent (ENOENT)
  | 'exists' // a repository or object that must not exist already does (EEXIST)
  | 'corrupt' // an object's bytes fail their authentication or hash (EBADMSG)
  | 'bad-key' // the key or passphrase does not open the repository (EACCES)
  | 'format' // an object is not in a format this version reads (EPROTO)
  | 'locked' // another process holds a lock this operation needs (EBUSY)
  | 'backend' // the store itself failed (I/O error, S3 error after retries) (EIO, or the system's own code: ENOSPC, ENOTDIR...)
  | 'config'; // the repository address or settings cannot be used (EINVAL)

const REPO_CODES: Record<RepoErrorReason, string> = {
  'not-found': 'ENOENT',
  exists: 'EEXIST',
  corrupt: 'EBADMSG',
  'bad-key': 'EACCES',
  format: 'EPROTO',
  locked: 'EBUSY',
  backend: 'EIO',
  config: 'EINVAL',
};

/** A backup repository (local directory or S3) refused an operation or found damage. */
export class RepoError extends DmthinError {
  /** Why: a stable string; `code` follows from it. */
  readonly reason: RepoErrorReason;
  /** The object's key inside the repository, where it applies. */
  declare key?: string;

  /**
   * `code` in fields overrides the reason's code: a store failure keeps the
   * system's own (ENOSPC, ENOTDIR...), which says more than EIO.
   */
  constructor(reason: RepoErrorReason, message: string, fields: ErrorFields & { key?: string; code?: string } = {}) {
    const { code, ...rest } = fields;
    super(code ?? REPO_CODES[reason], message, rest);
    this.reason = reason;
  }
}

/**
 * Why a name given for a thin pool or a thin volume led to none. Stable
 * strings: tests and callers may match on them.
 */
export type NameLookupReason =
  | 'not-found' // no such dm device, device node or active LVM volume (ENXIO)
  | 'not-a-pool' // found, but not a thin pool; `found` says what it is (EINVAL)
  | 'not-a-thin' // an LV name that is not a thin volume of the pool (EINVAL)
  | 'lvm-missing' // an LV name needs lvm2's `lvs`, which is not installed (ENOENT)
  | 'lvm-failed'; // `lvs` ran but failed or printed what could not be read (EIO)

const LOOKUP_CODES: Record<NameLookupReason, string> = {
  'not-found': 'ENXIO',
  'not-a-pool': 'EINVAL',
  'not-a-thin': 'EINVAL',
  'lvm-missing': 'ENOENT',
  'lvm-failed': 'EIO',
};

/**
 * A pool or thin volume name (dm name, `VG/LV`, device path, LV name) did not
 * resolve. `reason` says why and derives `code`; `name` is what was given and
 * `found`, when something was, describes it (e.g. "linear table").
 */
export class NameLookupError extends DmthinError {
  /** Why the name did not resolve. */
  readonly reason: NameLookupReason;
  /** The name given. */
  declare given?: string;
  /** What the name led to, when it led to something that is not what was wanted. */
  declare found?: string;

  constructor(reason: NameLookupReason, message: string, fields: ErrorFields & { given?: string; found?: string } = {}) {
    super(LOOKUP_CODES[reason], message, fields);
    this.reason = reason;
  }
}

/**
 * What the machine lacks for dmthin to do its work. Stable strings: tests and
 * callers may match on them.
 */
export type SetupProblem =
  | 'no-device-mapper' // /dev/mapper/control is missing, or the kernel has no device-mapper driver
  | 'needs-root' // EACCES/EPERM on the control device, a dm ioctl or a block device
  | 'no-native-addon'; // the compiled addon (dmthin.node) is missing or does not load

/**
 * The machine is not set up for what was asked: no device-mapper, not root,
 * no native addon. `kind` says which. `code`, `errno`, `syscall` and `path`
 * are those of the call that failed (`ENODEV` from `open` of
 * /dev/mapper/control, `EACCES`...); for the addon, `code` is Node's
 * (`MODULE_NOT_FOUND` when no addon file was found, `ERR_DLOPEN_FAILED` when
 * one was found but did not load).
 */
export class SetupError extends DmthinError {
  /** What is missing. */
  readonly kind: SetupProblem;

  constructor(kind: SetupProblem, code: string, message: string, fields: ErrorFields = {}) {
    super(code, message, fields);
    this.kind = kind;
  }
}

/** EACCES or EPERM: the kernel refused for lack of privilege. */
export function isPermissionCode(code: unknown): code is 'EACCES' | 'EPERM' {
  return code === 'EACCES' || code === 'EPERM';
}

const PERMISSION_TEXT: Record<string, string> = { EACCES: 'permission denied', EPERM: 'operation not permitted' };

/**
 * A `needs-root` SetupError for a failed call: `what` names the refused step
 * ("cannot open /dev/mapper/control"), `advice` ends the line. Fields (code,
 * errno, syscall, path, ...) are kept as the failed call reported them.
 */
export function needsRootError(code: 'EACCES' | 'EPERM', what: string, fields: ErrorFields, advice = 'run as root (e.g. with sudo)'): SetupError {
  // uid 0 refused: a container or security module withholds the capability, so "use sudo" would not help.
  const tail = process.getuid?.() === 0 ? 'this process is root but lacks that privilege (a container or security policy?)' : advice;
  return new SetupError('needs-root', code, `needs root (CAP_SYS_ADMIN): ${what}: ${PERMISSION_TEXT[code]}; ${tail}`, fields);
}

/** Bad arguments from a caller (library or CLI). */
export class UsageError extends DmthinError {
  constructor(message: string, fields: ErrorFields = {}) {
    super('EINVAL', message, fields);
  }
}

/** A failed system call (a SystemCallError, or Node's own errno error), not a refusal or an abort. */
export function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  return e instanceof SystemCallError || (!(e instanceof DmthinError) && typeof (e as NodeJS.ErrnoException)?.code === 'string' && typeof (e as NodeJS.ErrnoException).syscall === 'string');
}

/** An output format the function does not write (the CLI checks its --format with the same words). */
export function unknownFormat(format: unknown, known: readonly string[]): UsageError {
  return new UsageError(`unknown format ${typeof format === 'string' ? `'${format}'` : String(format)} (${known.join(', ')})`);
}

/** A long operation was cancelled through its AbortSignal. */
export class AbortError extends DmthinError {
  constructor(message = 'The operation was aborted', fields: ErrorFields = {}) {
    super('ABORT_ERR', message, fields);
  }
}

/**
 * Argument checks of the library's entry points: a caller's mistake is a
 * UsageError (EINVAL) naming the argument, not a TypeError from deep inside
 * or an I/O error of the output. Each returns nothing and throws on a bad value.
 */
export const check = {
  /** The options object a call cannot do without (`what`: the call). */
  required(o: unknown, what: string): void {
    if (o === null || typeof o !== 'object') throw new UsageError(`${what} needs an options object, got ${o === null ? 'null' : typeof o}`);
  },
  /** An options object (null and undefined are taken as none, as Node's own APIs take them). */
  options(o: unknown, what: string): void {
    if (o !== undefined && o !== null && typeof o !== 'object') throw new UsageError(`${what} must be an object, got ${describeValue(o)}`);
  },
  /** A non-empty string (a path, a name). */
  string(v: unknown, name: string): void {
    if (typeof v !== 'string' || v === '') throw new UsageError(`${name} must be a non-empty string, got ${describeValue(v)}`);
  },
  /** A string whose UTF-16 is well formed (it is recorded as UTF-8: a lone surrogate would become U+FFFD, two values one). */
  wellFormed(v: unknown, name: string): void {
    if (v === undefined) return;
    if (typeof v !== 'string' || /\p{Surrogate}/u.test(v)) throw new UsageError(`${name} must be a well-formed string (no lone surrogates), got ${describeValue(v)}`);
  },
  /** An optional callback. */
  callback(v: unknown, name: string): void {
    if (v !== undefined) check.func(v, name);
  },
  /** A function the call cannot do without. */
  func(v: unknown, name: string): void {
    if (typeof v !== 'function') throw new UsageError(`${name} must be a function, got ${describeValue(v)}`);
  },
  /** An optional AbortSignal. */
  signal(v: unknown): void {
    if (v !== undefined && !(v instanceof AbortSignal)) throw new UsageError(`signal must be an AbortSignal, got ${describeValue(v)}`);
  },
  /**
   * The options of a walk (`what`: whose): an object or none, its `signal`
   * an AbortSignal and its `onProgress` a function where given. Returns them,
   * `{}` for none (null too, as Node's own APIs take it).
   */
  walk<T extends object>(o: T | null | undefined, what: string): T {
    check.options(o, what);
    const v = (o ?? {}) as T & { signal?: unknown; onProgress?: unknown };
    check.signal(v.signal);
    check.callback(v.onProgress, 'onProgress');
    return v;
  },
  /** A whole number of at least `min` (a count, a size, a limit): a negative, fractional or NaN one would be taken silently. */
  integer(v: unknown, name: string, min = 1): void {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new UsageError(`${name} must be an integer of at least ${min}, got ${describeValue(v)}`);
  },
  /** An instance of `cls` (a ThinMetadata, a Repository...): a path or null given in its place is named, not a TypeError from inside. */
  instance(v: unknown, cls: { readonly prototype: object; readonly name: string }, name: string): void {
    // instanceof by hand: a class with a private constructor (ThinMetadata) is no `new`-able type.
    if (!Object.prototype.isPrototypeOf.call(cls.prototype, v as object)) throw new UsageError(`${name} must be ${/^[AEIOU]/.test(cls.name) ? 'an' : 'a'} ${cls.name}, got ${describeValue(v)}`);
  },
  /** A name or location (a non-empty string), or what it opens (`cls`): a repository or a Repository, a pool or a ThinPool. */
  nameOr(v: unknown, name: string, cls: { readonly prototype: object; readonly name: string }): void {
    if (typeof v === 'string' ? v === '' : !Object.prototype.isPrototypeOf.call(cls.prototype, v as object)) {
      throw new UsageError(`${name} must be a non-empty string or ${/^[AEIOU]/.test(cls.name) ? 'an' : 'a'} ${cls.name}, got ${describeValue(v)}`);
    }
  },
  /** An object with these methods (a Writable, a DataSource, a BlockSource...); `kind` says what it should be. */
  methods(v: unknown, name: string, kind: string, methods: readonly string[]): void {
    if (v === null || typeof v !== 'object' || methods.some((m) => typeof (v as Record<string, unknown>)[m] !== 'function')) {
      throw new UsageError(`${name} must be ${kind} (with ${methods.join(', ')}), got ${describeValue(v)}`);
    }
  },
  /** A thin device id: a number, an integer from 0 to 2^53-1 (a string or a bigint is named as such, not "bad device id 1"). */
  devId(v: unknown, name: string): void {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new UsageError(`${name} must be an integer 0..2^53-1 given as a number, got ${typeof v === 'bigint' ? `bigint ${v}n` : describeValue(v)}`);
  },
  /** An object of a kind the library made (a status, a report): `kind` says which and where it comes from. */
  object(v: unknown, name: string, kind: string): void {
    if (v === null || typeof v !== 'object') throw new UsageError(`${name} must be ${kind}, got ${describeValue(v)}`);
  },
  /** An optional boolean: a truthy 1 or 'yes' taken as true in one place and not in another would be worse than refused. */
  boolean(v: unknown, name: string): void {
    if (v !== undefined && typeof v !== 'boolean') throw new UsageError(`${name} must be true or false, got ${describeValue(v)}`);
  },
  /** An optional value out of a fixed set. */
  oneOf<T extends string>(v: unknown, name: string, allowed: readonly T[]): void {
    if (v !== undefined && !allowed.includes(v as T)) throw new UsageError(`${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${describeValue(v)}`);
  },
};

/** A value as a message shows it (a string quoted and cut, an object by its class): never a TypeError of its own (a Symbol, a bigint). */
export function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (v === null || v === undefined) return String(v);
  if (typeof v === 'object') {
    const name = (v as { constructor?: { name?: string } }).constructor?.name;
    return name && name !== 'Object' ? `${/^[AEIOU]/.test(name) ? 'an' : 'a'} ${name}` : 'a plain object';
  }
  if (typeof v === 'function') return 'a function';
  return `${typeof v} ${String(v)}`;
}

/** Throws AbortError if the signal has fired. */
export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
}

/**
 * `p`, or AbortError as soon as `signal` fires: for a wait that may never end
 * by itself (a reader of the output that stopped reading). `p` is left to
 * settle on its own.
 */
export async function unlessAborted(p: Promise<unknown>, signal?: AbortSignal): Promise<void> {
  throwIfAborted(signal);
  await whilePending(p, signal);
}

/**
 * `p`, unless `signal` fires while it is still pending: then AbortError. A
 * signal that fired before does not count once `p` has settled (a command's
 * last flush of output that has already left: its work is done).
 */
export async function whilePending(p: Promise<unknown>, signal?: AbortSignal): Promise<void> {
  if (!signal) {
    await p;
    return;
  }
  let settled = false;
  const watched = p.then(
    () => void (settled = true),
    (e: unknown) => {
      settled = true;
      throw e;
    },
  );
  let onAbort!: () => void;
  const aborted = new Promise<void>((resolve) => {
    onAbort = resolve;
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    // `watched` first: when both are ready, the settled wait wins.
    await Promise.race([watched, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
  if (!settled) {
    watched.catch(() => undefined);
    throw new AbortError(undefined, { cause: signal.reason });
  }
}

/**
 * Re-types an error that came out of the native addon (already Node-shaped)
 * into a SystemCallError, keeping errno, syscall, path and offset.
 */
export function fromNative(err: unknown, extra: ErrorFields = {}): DmthinError {
  if (err instanceof DmthinError) return err;
  const e = err as { message?: string; code?: string; errno?: number; syscall?: string; path?: string; offset?: number };
  if (e && typeof e.code === 'string' && typeof e.errno === 'number') {
    return new SystemCallError(e.code, e.message ?? e.code, {
      errno: e.errno,
      syscall: e.syscall,
      path: e.path,
      ...(e.offset !== undefined ? { offset: e.offset } : {}),
      ...extra,
    });
  }
  if (err instanceof Error) return new DmthinError('EUNKNOWN', err.message, { cause: err, ...extra });
  return new DmthinError('EUNKNOWN', String(err), extra);
}
