/**
 * The one error module. Every error dmthin throws is a DmthinError with Node's
 * SystemError shape (`code`, negative `errno`, `syscall`, `path`) plus domain
 * fields (device, block, tree, message...). `code` is the stable identifier.
 */
import { constants } from 'node:os';

// Node's table lacks a few Linux codes the kernel uses for metadata faults.
const ERRNO: Record<string, number> = { ENOTBLK: 15, EUCLEAN: 117, ...(constants.errno as unknown as Record<string, number>) };

/** Negative errno for a code, as Node reports it (`EBUSY` -> -16), or undefined. */
export function errnoOf(code: string): number | undefined {
  const n = ERRNO[code];
  return typeof n === 'number' ? -n : undefined;
}

/** Code for a (positive or negative) errno number, e.g. 16 -> 'EBUSY'. */
export function codeOfErrno(errno: number): string {
  const n = Math.abs(errno);
  for (const [k, v] of Object.entries(ERRNO)) if (v === n) return k;
  return 'EUNKNOWN';
}

export interface ErrorFields {
  errno?: number;
  syscall?: string;
  path?: string;
  /** dm device name or thin-pool name. */
  device?: string;
  /** Metadata (or data) block number the problem is about. */
  block?: number;
  cause?: unknown;
  [extra: string]: unknown;
}

export class DmthinError extends Error {
  readonly code: string;
  // `declare`: no class-field initialisers, which would overwrite what the
  // constructor copies in from `fields` (ES2022 define semantics).
  declare errno?: number;
  declare syscall?: string;
  declare path?: string;
  declare device?: string;
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
  readonly ioctl: string;
  declare targetMessage?: string; // declare: a class field would reset what super() assigned

  constructor(code: string, message: string, fields: ErrorFields & { ioctl: string; targetMessage?: string }) {
    super(code, message, { syscall: 'ioctl', ...fields });
    this.ioctl = fields.ioctl;
  }
}

/** Kernel output (an ioctl result or a target's status/table line) did not
 * have the expected shape. `input` is the offending text, when there is one. */
export class DmParseError extends DmthinError {
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
  readonly kind: CorruptionKind;
  declare tree?: string;
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
  readonly reason: StreamErrorReason;
  declare offset?: number;
  declare record?: number;

  constructor(reason: StreamErrorReason, message: string, fields: ErrorFields & { offset?: number; record?: number } = {}) {
    super(STREAM_CODES[reason], message, fields);
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

/** A long operation was cancelled through its AbortSignal. */
export class AbortError extends DmthinError {
  constructor(message = 'The operation was aborted', fields: ErrorFields = {}) {
    super('ABORT_ERR', message, fields);
  }
}

/** Throws AbortError if the signal has fired. */
export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
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
