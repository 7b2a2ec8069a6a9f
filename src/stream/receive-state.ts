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
import { mkdirSync } from 'node:fs';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { DmthinError, StreamError } from '../errors';
import { describeIdentity, identityKey, type SnapshotIdentity, type StreamHeader } from './format';

export const DEFAULT_STATE_DIR = '/var/lib/dmthin/receive';

export interface IdentityJson {
  pool: string;
  devId: number;
  creationTime: number;
  /** Decimal (a u64). */
  transactionId: string;
  /** identityKey(): SHA-256 of the canonical encoding. */
  key: string;
}

export interface StateEntry {
  snapshot: IdentityJson;
  base: IdentityJson | null;
  /** SHA-256 (hex) of the stream, as in its end record. */
  digest: string;
  deviceSize: number;
  dataBlockSize: number;
  /** ISO time. */
  at: string;
}

export interface ReceiveState {
  format: 'dmthin-receive-state';
  version: 1;
  target: string;
  /** The last stream applied completely, or null. */
  current: StateEntry | null;
  /** A stream whose apply started and did not finish, or null. */
  pending: StateEntry | null;
}

export function identityJson(id: SnapshotIdentity): IdentityJson {
  return { pool: id.pool, devId: id.devId, creationTime: id.creationTime, transactionId: id.transactionId.toString(), key: identityKey(id) };
}

export function entryFor(h: StreamHeader, digest: string): StateEntry {
  return {
    snapshot: identityJson(h.target),
    base: h.base ? identityJson(h.base) : null,
    digest,
    deviceSize: h.deviceSize,
    dataBlockSize: h.dataBlockSize,
    at: new Date().toISOString(),
  };
}

/** Where the state of `target` lives unless told otherwise. */
export function defaultStateFile(target: string, blockDevice: boolean, stateDir = DEFAULT_STATE_DIR): string {
  const abs = resolve(target);
  if (!blockDevice) return `${abs}.dmthin-state.json`;
  // One flat file per device path ("/dev/mapper/vg-b" -> "dev%2Fmapper%2Fvg-b.json").
  return join(stateDir, `${encodeURIComponent(abs.replace(/^\/+/, ''))}.json`);
}

export type StateRead = { ok: true; state: ReceiveState | null } | { ok: false; error: string };

/** The recorded state; `ok: false` when the file exists but cannot be used. */
export async function readState(file: string): Promise<StateRead> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { ok: true, state: null };
    return { ok: false, error: `${file}: ${(e as Error).message}` };
  }
  try {
    const s = JSON.parse(text) as ReceiveState;
    if (s.format !== 'dmthin-receive-state' || s.version !== 1 || !('current' in s)) throw new Error('not a dmthin receive state file');
    return { ok: true, state: s };
  } catch (e) {
    return { ok: false, error: `${file}: ${(e as Error).message}` };
  }
}

export async function writeState(file: string, state: ReceiveState): Promise<void> {
  const dir = dirname(file);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const tmp = join(dir, `.${basename(file)}.${process.pid}.tmp`);
  try {
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.writeFile(JSON.stringify(state, null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    const err = e as NodeJS.ErrnoException;
    throw new DmthinError(err.code ?? 'EIO', `cannot write receive state ${file}: ${err.message}`, { path: file, syscall: err.syscall, cause: e });
  }
  // The rename is durable once the directory is.
  const d = await open(dir, 'r').catch(() => undefined);
  if (d) await d.sync().catch(() => undefined).finally(() => d.close());
}

/**
 * Whether a stream may be applied on a target in state `read`. Full streams
 * always may; incremental ones need the target to hold their base.
 */
export function checkBase(read: StateRead, h: StreamHeader, digest: string | null, stateFile: string, force: boolean): void {
  if (!h.base || force) return;
  const fail = (m: string): never => {
    throw new StreamError('base-mismatch', `${m} (use --force to apply anyway)`, { path: stateFile });
  };
  if (!read.ok) return fail(`incremental stream, but the target's receive state is unusable: ${read.error}`);
  const s = read.state;
  // A retry of the stream whose apply was interrupted: its records are absolute, applying them again is safe.
  if (s?.pending && digest !== null && s.pending.digest === digest) return;
  if (!s?.current) {
    return fail(`incremental stream against ${describeIdentity(h.base)}, but ${stateFile} records no completed receive: receive a full stream first`);
  }
  if (s.pending) {
    // Only known once the whole stream has been read: the early check lets it pass.
    if (digest === null) return;
    fail(`the target is inconsistent: receiving stream ${s.pending.digest.slice(0, 16)}… was interrupted; receive that stream again or a full stream`);
  }
  if (s.current.snapshot.key !== identityKey(h.base)) {
    const c = s.current.snapshot;
    fail(
      `incremental stream against ${describeIdentity(h.base)}, but the target holds device ${c.devId} of ${c.pool} (created at time ${c.creationTime}, transaction ${c.transactionId})`,
    );
  }
}
