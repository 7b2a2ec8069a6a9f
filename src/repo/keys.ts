/**
 * The repository config object and key handling (docs/repository.md,
 * "Config" and "Keys"). An encrypted repository has a random 32-byte master
 * key, stored in the config wrapped (AES-256-GCM) under a key-encryption key
 * that comes from a key file (HKDF-SHA-256) or a passphrase (scrypt, its
 * parameters in the config). Unwrapping is the authenticated check that
 * refuses a wrong key before anything is written.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { constants } from 'node:fs';
import { link, open, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { check, RepoError, UsageError } from '../errors';
import { removeDeadTemps, tempPathBeside } from '../output/file';
import type { RepoKeys } from './codec';

/** The repository format version this code writes and reads. */
export const REPO_FORMAT_VERSION = 1;
const FORMAT_NAME = 'dmthin-repository';

/** Where an encrypted repository's key comes from: exactly one of the two. */
export interface KeySource {
  /** A file holding 32 random bytes (raw, or as 64 hex digits). */
  keyFile?: string;
  /** A passphrase, stretched with scrypt. */
  passphrase?: string;
}

/** scrypt cost parameters (stored in the config). */
export interface ScryptParams {
  /** CPU/memory cost, a power of two. */
  N: number;
  /** Block size. */
  r: number;
  /** Parallelism. */
  p: number;
}

/** Default scrypt cost: 64 MiB of memory, about 0.3 CPU seconds (measured on Node 20). */
export const DEFAULT_SCRYPT: ScryptParams = { N: 1 << 16, r: 8, p: 1 };

/** The least N a new repository takes: 2^14 (16 MiB with r = 8), scrypt's own figure for interactive logins; below it a passphrase is cheap to guess. */
export const MIN_SCRYPT_N = 1 << 14;

/**
 * The most memory scrypt may take, 128·N·r bytes: 1 GiB (N = 2^20 at r = 8),
 * and the most lanes, p = 16 (each p costs the time of one more pass). A
 * stored config beyond them is damage, not a cost to pay: opening it would
 * take that memory and time before a wrong passphrase could even be told.
 */
export const MAX_SCRYPT_MEMORY = 1 << 30;
export const MAX_SCRYPT_P = 16;

/** What is wrong with scrypt parameters, or null: N a power of two of at least MIN_SCRYPT_N, r and p at least 1, within the bounds above. */
function scryptParamsProblem(p: unknown): string | null {
  if (p === null || typeof p !== 'object') return `scrypt must be an object { N, r, p }, got ${p === null ? 'null' : typeof p}`;
  const { N, r, p: par } = p as Record<string, unknown>;
  if (typeof N !== 'number' || !Number.isSafeInteger(N) || N < MIN_SCRYPT_N || !Number.isInteger(Math.log2(N))) {
    return `scrypt.N must be a power of two of at least 2^14 (${MIN_SCRYPT_N}), got ${typeof N === 'number' ? N : typeof N}`;
  }
  for (const [name, v] of [['r', r], ['p', par]] as const) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) return `scrypt.${name} must be an integer of at least 1, got ${typeof v} ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`;
  }
  if (128 * N * (r as number) > MAX_SCRYPT_MEMORY) return `scrypt takes 128·N·r bytes of memory, at most 1 GiB (N·r at most 2^23), got N ${N} and r ${String(r)}`;
  if ((par as number) > MAX_SCRYPT_P) return `scrypt.p must be at most ${MAX_SCRYPT_P}, got ${String(par)}`;
  return null;
}

/** scrypt parameters a new repository may record (UsageError otherwise, before anything is written): see scryptParamsProblem. */
export function checkScryptParams(p: unknown): void {
  const problem = scryptParamsProblem(p);
  if (problem !== null) throw new UsageError(problem);
}

interface KdfKeyFile {
  name: 'keyfile';
  salt: string;
}
interface KdfScrypt extends ScryptParams {
  name: 'scrypt';
  salt: string;
}

/** The config's decoded body. */
export interface RepoConfig {
  format: typeof FORMAT_NAME;
  version: number;
  /** Random 32 hex digits: the repository's identity (salts the derived keys). */
  id: string;
  createdMs: number;
  /** Compression of new objects, as parseCompression reads it. */
  compression: string;
  encryption: null | { cipher: 'aes-256-gcm'; idHash: 'hmac-sha256'; kdf: KdfKeyFile | KdfScrypt; wrappedKey: string };
}

/** Creates a key file of 32 random bytes (mode 0600); RepoError 'exists' if the file exists. */
export async function createKeyFile(path: string): Promise<void> {
  check.string(path, 'path');
  // Written whole beside it, then linked into place: link() never replaces a
  // file, and a full disk or a crash leaves no short key under the name. A
  // run killed before its unlink left its temporary file (a key, perhaps the
  // one linked): removed here, as -o removes a killed run's.
  await removeDeadTemps(path);
  const tmp = tempPathBeside(path);
  let fh;
  try {
    fh = await open(tmp, 'wx', 0o600);
  } catch (e) {
    throw new RepoError('config', `cannot create key file ${path}: ${(e as Error).message}`, { path, cause: e });
  }
  try {
    try {
      await fh.writeFile(randomBytes(32));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await link(tmp, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new RepoError('exists', `key file ${path} already exists; refusing to overwrite a key`, { path });
    throw new RepoError('config', `cannot write key file ${path}: ${(e as Error).message}; nothing was left there`, { path, cause: e });
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  // The new name on disk too.
  const dir = await open(dirname(path), 'r').catch(() => null);
  await dir?.sync().catch(() => undefined);
  await dir?.close();
}

/** The most a key file may hold: 64 hex digits and some white space (32 raw bytes fit too). */
const MAX_KEY_FILE_BYTES = 4096;

async function readKeyFile(path: string): Promise<Buffer> {
  let raw: Buffer;
  // Opened without blocking (a FIFO with no writer would wait for ever) and
  // read only if it is a small regular file: /dev/zero as a key file read
  // until memory ran out.
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = await fh.stat();
    if (!st.isFile()) throw new RepoError('config', `key file ${path} is not a regular file: give the file that holds the key (32 bytes, raw or as 64 hex digits)`, { path });
    if (st.size > MAX_KEY_FILE_BYTES) throw new RepoError('config', `key file ${path} holds ${st.size} bytes, not a key: a key file holds 32 bytes (raw, or 64 hex digits)`, { path });
    raw = await fh.readFile();
  } catch (e) {
    if (e instanceof RepoError) throw e;
    throw new RepoError('config', `cannot read key file ${path}: ${(e as Error).message}`, { path, cause: e });
  } finally {
    await fh?.close().catch(() => undefined);
  }
  if (raw.length === 32) return raw;
  const text = raw.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  throw new RepoError('config', `key file ${path} must hold 32 bytes (raw, or 64 hex digits); it holds ${raw.length} bytes`, { path });
}

function checkSource(key: KeySource): void {
  const n = (key.keyFile !== undefined ? 1 : 0) + (key.passphrase !== undefined ? 1 : 0);
  if (n !== 1) throw new RepoError('config', 'give exactly one of a key file or a passphrase');
  if (key.passphrase !== undefined && key.passphrase.length === 0) throw new RepoError('config', 'the passphrase is empty');
}

function scrypt(pass: string, salt: Buffer, p: ScryptParams): Promise<Buffer> {
  return new Promise((res, rej) =>
    scryptCb(pass.normalize('NFC'), salt, 32, { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r + (16 << 20) }, (e, k) => (e ? rej(e) : res(k))),
  );
}

async function kek(key: KeySource, kdf: KdfKeyFile | KdfScrypt): Promise<Buffer> {
  const salt = Buffer.from(kdf.salt, 'base64');
  if (kdf.name === 'keyfile') {
    if (key.keyFile === undefined) throw new RepoError('bad-key', 'this repository is opened with a key file, not a passphrase');
    return Buffer.from(hkdfSync('sha256', await readKeyFile(key.keyFile), salt, 'dmthin repository key-encryption key', 32));
  }
  if (key.passphrase === undefined) throw new RepoError('bad-key', 'this repository is opened with a passphrase, not a key file');
  return scrypt(key.passphrase, salt, kdf);
}

function deriveKeys(master: Buffer, repoId: string): RepoKeys {
  const d = (info: string) => Buffer.from(hkdfSync('sha256', master, Buffer.from(repoId, 'hex'), `dmthin repository ${info}`, 32));
  return { enc: d('object encryption'), id: d('chunk id'), mac: d('config mac') };
}

function wrapAad(repoId: string): Buffer {
  return Buffer.from(`dmthin repository master key ${repoId}`);
}

function bodyMac(body: string, keys: RepoKeys | null): string {
  return (keys ? createHmac('sha256', keys.mac) : createHash('sha256')).update(body).digest('hex');
}

/** Builds a new config (and the keys it implies) for Repository.create. */
export async function newConfig(compression: string, key: KeySource | undefined, scryptParams: ScryptParams = DEFAULT_SCRYPT): Promise<{ config: RepoConfig; keys: RepoKeys | null; stored: Buffer }> {
  const id = randomBytes(16).toString('hex');
  let encryption: RepoConfig['encryption'] = null;
  let keys: RepoKeys | null = null;
  if (key) {
    checkSource(key);
    const salt = randomBytes(16).toString('base64');
    const kdf: KdfKeyFile | KdfScrypt = key.keyFile !== undefined ? { name: 'keyfile', salt } : { name: 'scrypt', ...scryptParams, salt };
    const master = randomBytes(32);
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', await kek(key, kdf), nonce);
    c.setAAD(wrapAad(id));
    const ct = Buffer.concat([c.update(master), c.final()]);
    encryption = { cipher: 'aes-256-gcm', idHash: 'hmac-sha256', kdf, wrappedKey: Buffer.concat([nonce, ct, c.getAuthTag()]).toString('base64') };
    keys = deriveKeys(master, id);
  }
  const config: RepoConfig = { format: FORMAT_NAME, version: REPO_FORMAT_VERSION, id, createdMs: Date.now(), compression, encryption };
  const body = JSON.stringify(config);
  const stored = Buffer.from(`${JSON.stringify({ body, mac: bodyMac(body, keys) }, null, 1)}\n`);
  return { config, keys, stored };
}

/**
 * Reads a stored config and opens its keys. Refuses (before the caller
 * writes anything): a wrong key or passphrase ('bad-key', found by the failed
 * authentication of the wrapped master key), a missing key for an encrypted
 * repository ('bad-key'), a key for an unencrypted one ('config'), damage
 * ('corrupt'), an unknown version ('format').
 */
export async function openConfig(stored: Buffer, key: KeySource | undefined, where: string): Promise<{ config: RepoConfig; keys: RepoKeys | null }> {
  const corrupt = (why: string) => new RepoError('corrupt', `the repository config at ${where} is damaged (${why})`, { key: 'config' });
  let outer: { body?: unknown; mac?: unknown };
  let config: RepoConfig;
  try {
    outer = JSON.parse(stored.toString('utf8')) as typeof outer;
    if (typeof outer.body !== 'string' || typeof outer.mac !== 'string') throw new Error('fields');
    config = JSON.parse(outer.body) as RepoConfig;
  } catch {
    throw corrupt('not the JSON it should be');
  }
  if (config.format !== FORMAT_NAME) throw new RepoError('format', `${where} does not hold a dmthin repository config`, { key: 'config' });
  if (config.version !== REPO_FORMAT_VERSION)
    throw new RepoError('format', `the repository at ${where} has format version ${String(config.version)}; this dmthin reads version ${REPO_FORMAT_VERSION}: upgrade dmthin`, { key: 'config' });
  const body = outer.body as string;
  const mac = Buffer.from(outer.mac as string, 'hex');
  let keys: RepoKeys | null = null;
  if (config.encryption === null) {
    if (key && (key.keyFile !== undefined || key.passphrase !== undefined))
      throw new RepoError('config', `the repository at ${where} is not encrypted, but a key was given; open it without one`, { key: 'config' });
  } else {
    if (!key || (key.keyFile === undefined && key.passphrase === undefined))
      throw new RepoError('bad-key', `the repository at ${where} is encrypted: give its key file or passphrase`, { key: 'config' });
    checkSource(key);
    const enc = config.encryption;
    if (typeof enc.wrappedKey !== 'string' || !enc.kdf || typeof enc.kdf.salt !== 'string') throw corrupt('encryption fields');
    const kdfName: unknown = enc.kdf.name;
    if (kdfName !== 'keyfile' && kdfName !== 'scrypt') throw corrupt(`key derivation ${JSON.stringify(kdfName)}`);
    // Checked before they are used: the config is authenticated only with the key they derive.
    const problem = enc.kdf.name === 'scrypt' ? scryptParamsProblem(enc.kdf) : null;
    if (problem !== null) throw corrupt(problem);
    const w = Buffer.from(enc.wrappedKey, 'base64');
    if (w.length !== 12 + 32 + 16) throw corrupt('wrapped key length');
    let master: Buffer;
    try {
      const d = createDecipheriv('aes-256-gcm', await kek(key, enc.kdf), w.subarray(0, 12));
      d.setAAD(wrapAad(config.id));
      d.setAuthTag(w.subarray(44));
      master = Buffer.concat([d.update(w.subarray(12, 44)), d.final()]);
    } catch (e) {
      if (e instanceof RepoError) throw e;
      throw new RepoError('bad-key', `the ${key.keyFile !== undefined ? 'key file' : 'passphrase'} does not open the repository at ${where}; nothing was written`, { key: 'config' });
    }
    keys = deriveKeys(master, config.id);
  }
  const want = Buffer.from(bodyMac(body, keys), 'hex');
  if (mac.length !== want.length || !timingSafeEqual(mac, want)) throw corrupt('its checksum does not match');
  return { config, keys };
}
