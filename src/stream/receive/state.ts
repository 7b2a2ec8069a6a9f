/**
 * What a receive target holds, remembered between receives: the identity of
 * the last snapshot applied completely and its stream's digest. An
 * incremental stream is applied only on top of the snapshot it was computed
 * against. While a stream is being applied the target is in between, which
 * is recorded too (`pending`): only that same stream (records are absolute,
 * so applying it again is safe) or a full stream may follow.
 *
 * Location: `<target>.dmthin-state.json` next to a regular-file target; for a
 * block device, one file per target path under /var/lib/dmthin/receive/.
 * Written atomically (temp file, fsync, rename, fsync of the directory).
 */
import { StreamError } from '../../errors';
import { describeIdentity, identityKey, type SnapshotIdentity, type StreamHeader } from '../format/records';
import { defaultJobStateFile, readStateText, writeFileAtomically, type FileStamp } from '../../output/file';

/** Where the receive state of block-device targets is kept by default. */
export const DEFAULT_STATE_DIR = '/var/lib/dmthin/receive';

/** A snapshot identity as the state file holds it (the transaction id as a string). */
export interface IdentityJson {
  /** The pool: the dm uuid (or name) of a live pool, or a label for an offline image. */
  pool: string;
  /** The thin device id. */
  devId: number;
  /** Pool time when the device was created. */
  creationTime: number;
  /** Decimal (a u64). */
  transactionId: string;
  /** identityKey(): SHA-256 of the canonical encoding. */
  key: string;
}

/** One received stream, as the state file records it. */
export interface StateEntry {
  /** The snapshot the stream carried. */
  snapshot: IdentityJson;
  /** Its base, or null for a full stream. */
  base: IdentityJson | null;
  /** The stream's digest (hex), as in its end record. */
  digest: string;
  /** The stream's format version (which digest that is); absent in files written before version 2: 1. */
  formatVersion?: number;
  /** The device size in bytes. */
  deviceSize: number;
  /** The source pool's data block size in sectors. */
  dataBlockSize: number;
  /**
   * The snapshot's mapping-root digest as the stream carried it (format 4
   * on): a later incremental whose base has another is refused.
   */
  mappingRoot?: string;
  /** ISO time. */
  at: string;
}

/** A target's receive state file: what it holds, and what was being applied. */
export interface ReceiveState {
  /** Identifies the file's kind. */
  format: 'dmthin-receive-state';
  /** The file format's version. */
  version: 1;
  /** The target the state is about. */
  target: string;
  /**
   * What the target was when the state was written (output/file.ts
   * targetIdentity: a dm uuid, a file's inode and birth time...). Absent in
   * states written before stop 40: then the path alone names it.
   */
  targetId?: string;
  /**
   * A file target's size and modification time when `current` was recorded,
   * or, with `pending`, when that receive failed or was interrupted (a retry
   * then refuses a file written since)
   * (absent for block devices and in states written before stop 40): a file
   * written since, by anyone (another receive through another of its names
   * too), no longer holds what `current` says.
   */
  file?: FileStamp;
  /** The last stream applied completely, or null. */
  current: StateEntry | null;
  /** A stream whose apply started and did not finish, or null. */
  pending: StateEntry | null;
}

function identityJson(id: SnapshotIdentity): IdentityJson {
  return { pool: id.pool, devId: id.devId, creationTime: id.creationTime, transactionId: id.transactionId.toString(), key: identityKey(id) };
}

export function entryFor(h: StreamHeader, digest: string): StateEntry {
  return {
    snapshot: identityJson(h.target),
    base: h.base ? identityJson(h.base) : null,
    digest,
    formatVersion: h.version,
    deviceSize: h.deviceSize,
    dataBlockSize: h.dataBlockSize,
    ...(h.targetRoot !== undefined ? { mappingRoot: h.targetRoot } : {}),
    at: new Date().toISOString(),
  };
}

/** Where the state of `target` lives unless told otherwise (one file per target, whichever path names it: output/file.ts defaultJobStateFile). */
export function defaultStateFile(target: string, blockDevice: boolean, stateDir = DEFAULT_STATE_DIR): string {
  return defaultJobStateFile(target, blockDevice, stateDir, '.dmthin-state.json');
}

/** readState's answer: the state (null when there is no file yet), or why the file cannot be used. */
export type StateRead =
  | {
      /** The file was read (or does not exist). */
      ok: true;
      /** The state, or null when there is no file. */
      state: ReceiveState | null;
    }
  | {
      /** The file exists but cannot be used. */
      ok: false;
      /** Why. */
      error: string;
    };

const HEX64 = /^[0-9a-f]{64}$/;

/** Why `x` is not a usable identity, or null. The key must match the fields (it is what checks compare). */
function identityProblem(x: unknown): string | null {
  if (typeof x !== 'object' || x === null) return 'not an object';
  const i = x as Record<string, unknown>;
  if (typeof i.pool !== 'string') return 'pool is not a string';
  if (!Number.isInteger(i.devId)) return 'devId is not an integer';
  if (!Number.isInteger(i.creationTime)) return 'creationTime is not an integer';
  if (typeof i.transactionId !== 'string' || !/^[0-9]{1,20}$/.test(i.transactionId)) return 'transactionId is not a decimal string';
  if (typeof i.key !== 'string' || !HEX64.test(i.key)) return 'key is not a SHA-256 in hex';
  try {
    const id: SnapshotIdentity = { pool: i.pool, devId: i.devId as number, creationTime: i.creationTime as number, transactionId: BigInt(i.transactionId) };
    if (identityKey(id) !== i.key) return 'key does not match the identity';
  } catch (e) {
    return (e as Error).message;
  }
  return null;
}

function entryProblem(x: unknown): string | null {
  if (typeof x !== 'object' || x === null) return 'not an object';
  const e = x as Record<string, unknown>;
  const snap = identityProblem(e.snapshot);
  if (snap) return `snapshot: ${snap}`;
  if (e.base !== null) {
    const base = identityProblem(e.base);
    if (base) return `base: ${base}`;
  }
  if (typeof e.digest !== 'string' || !HEX64.test(e.digest)) return 'digest is not a SHA-256 in hex';
  if ('formatVersion' in e && !(Number.isInteger(e.formatVersion) && (e.formatVersion as number) >= 1)) return 'formatVersion is not a positive integer';
  if (!Number.isSafeInteger(e.deviceSize) || (e.deviceSize as number) < 0 || (e.deviceSize as number) % 512 !== 0) return 'deviceSize is not a whole number of sectors';
  if (!Number.isInteger(e.dataBlockSize) || (e.dataBlockSize as number) <= 0) return 'dataBlockSize is not a positive integer';
  if ('mappingRoot' in e && (typeof e.mappingRoot !== 'string' || !HEX64.test(e.mappingRoot))) return 'mappingRoot is not a SHA-256 in hex';
  return null;
}

/** Why a parsed state file cannot be used, or null. */
function stateProblem(s: unknown): string | null {
  if (typeof s !== 'object' || s === null || Array.isArray(s)) return 'not a JSON object';
  const o = s as Record<string, unknown>;
  if (o.format !== 'dmthin-receive-state') return 'not a dmthin receive state file (format)';
  if (o.version !== 1) return `state format version ${String(o.version)} (this build reads version 1)`;
  if ('targetId' in o && typeof o.targetId !== 'string') return 'targetId is not a string';
  if ('file' in o) {
    const f = o.file as Record<string, unknown> | null;
    if (typeof f !== 'object' || f === null || !Number.isSafeInteger(f.size) || !Number.isFinite(f.mtimeMs)) return 'file is not a size and a modification time';
  }
  for (const k of ['current', 'pending'] as const) {
    if (!(k in o)) return `no "${k}" field`;
    if (o[k] !== null) {
      const p = entryProblem(o[k]);
      if (p) return `"${k}": ${p}`;
    }
  }
  return null;
}

/** The recorded state; `ok: false` when the file exists but cannot be used (unreadable, cut short, fields missing or wrong). */
export async function readState(file: string): Promise<StateRead> {
  let text: string | null;
  try {
    text = await readStateText(file, (why) => new Error(`is ${why}`));
  } catch (e) {
    return { ok: false, error: `${file}: ${(e as Error).message}` };
  }
  if (text === null) return { ok: true, state: null };
  let s: unknown;
  try {
    s = JSON.parse(text);
  } catch (e) {
    return { ok: false, error: `${file}: not valid JSON (${(e as Error).message}; cut short?)` };
  }
  const problem = stateProblem(s);
  if (problem) return { ok: false, error: `${file}: ${problem}` };
  return { ok: true, state: s as ReceiveState };
}

export async function writeState(file: string, state: ReceiveState): Promise<void> {
  await writeFileAtomically(file, JSON.stringify(state, null, 2) + '\n');
}

/**
 * Whether a stream may be applied on a target in state `read`. Full streams
 * always may; incremental ones need the target to hold their base (unless
 * `force`), at the size it was received at (unless `resized`).
 * `digest` is null for the early check on the header alone.
 */
/**
 * Whether `h` (its whole-stream digest `digest`) is the stream `e` records:
 * the same digest, or, sent as another format version (another digest for
 * the same records: a sender upgraded in between), the same snapshot, base,
 * size and mapping root.
 */
function sameStream(e: StateEntry, h: StreamHeader, digest: string): boolean {
  if (e.digest === digest) return true;
  if ((e.formatVersion ?? 1) === h.version) return false;
  // Another version's bytes: the same records only if the snapshot is the one
  // recorded. Its identity survives a write; its mapping root does not, so
  // both must carry one (version 4 on): a version-4 stream after a version-3
  // receive, or the reverse, cannot show that the snapshot was not written
  // in between (a version-4 stream of a rewritten snapshot was taken as the
  // one a version-3 receive had applied, exit 0 with the old content).
  if (e.mappingRoot === undefined || h.targetRoot === undefined || h.targetRoot !== e.mappingRoot) return false;
  return e.snapshot.key === identityKey(h.target) && (e.base?.key ?? null) === (h.base ? identityKey(h.base) : null) && e.deviceSize === h.deviceSize;
}

export function checkBase(read: StateRead, h: StreamHeader, digest: string | null, stateFile: string, force: boolean, resized = false): void {
  if (!h.base) return;
  const fail = (m: string): never => {
    throw new StreamError('base-mismatch', `${m} (option force applies it anyway)`, { path: stateFile });
  };
  if (!read.ok) {
    if (force) return;
    throw new StreamError(
      'state-file',
      `incremental stream, but the target's receive state is damaged: ${read.error}. Receive a full stream to start over (it replaces the state file), ` +
        `or, if the target is known to hold ${describeIdentity(h.base)}, apply it anyway (option force)`,
      { path: stateFile },
    );
  }
  const s = read.state;
  // A retry of the stream whose apply was interrupted: its records are absolute, applying them again is safe.
  const retry = s?.pending != null && digest !== null && sameStream(s.pending, h, digest);
  // The stream the target already holds, sent again (a sender that crashed before it saw the confirmation): applying it again is safe.
  const holdsTarget = s?.pending == null && s?.current != null && s.current.snapshot.key === identityKey(h.target);
  const again = holdsTarget && (digest === null || sameStream(s!.current!, h, digest));
  if (!force && !retry && !again) {
    if (!s?.current) {
      return fail(`incremental stream against ${describeIdentity(h.base)}, but ${stateFile} records no completed receive: receive a full stream first`);
    }
    if (s.pending) {
      // Only known once the whole stream has been read: the early check lets it pass.
      if (digest !== null) fail(`the target is inconsistent: receiving stream ${s.pending.digest.slice(0, 16)}… was interrupted; receive that stream again or a full stream`);
    } else if (s.current.snapshot.key !== identityKey(h.base)) {
      const c = s.current.snapshot;
      fail(
        `incremental stream against ${describeIdentity(h.base)}, but the target holds device ${c.devId} of ${c.pool} (created at time ${c.creationTime}, transaction ${c.transactionId})`,
      );
    } else if (h.baseRoot !== undefined && s.current.mappingRoot !== undefined && h.baseRoot !== s.current.mappingRoot) {
      // The same identity, other mappings: the base was written after it was sent here.
      fail(
        `the stream's base ${describeIdentity(h.base)} was written after it was sent to this target (its mappings changed since, or the pool's metadata was rebuilt, e.g. by thin_repair), ` +
          `so the target does not hold what the stream starts from: send the snapshot in full. Snapshots that are sent as bases must not be written`,
      );
    }
  }
  const cur = s?.current;
  if (cur && !resized && cur.snapshot.key === identityKey(h.base) && cur.deviceSize !== h.deviceSize) {
    throw new StreamError(
      'size-changed',
      `the stream's device is ${h.deviceSize} bytes, but its base ${describeIdentity(h.base)} was received at ${cur.deviceSize} bytes (${stateFile}): ` +
        `if the volume was resized on purpose, receive it as resized (option resized; a grown tail is zeroed first), else send it again with the right size`,
      { path: stateFile, deviceSize: h.deviceSize, baseSize: cur.deviceSize },
    );
  }
}
