/**
 * Library-level helpers for the root-VM suite: pools made through
 * ThinPool.create on loop (or dm) devices and registered with a DmSandbox
 * for teardown, a DeviceMapper that records the ioctls it sends, a
 * background O_DIRECT writer, thin_dump XML and library views of the same
 * metadata in one comparable shape, and field-by-field comparisons of the
 * typed status/table parsers with dmsetup's output.
 */
import { sectors, dataBlocks } from '../../src/units';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants } from 'node:os';
import { join } from 'node:path';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { CMD_NAMES, Cmd, DATA_START, type DmTarget, TARGET_MSG, decodeHeader } from '../../src/dm/ioctl';
import type { ThinPoolFeature, ThinPoolStatus } from '../../src/dm/targets/thin-pool';
import type { ThinStatus } from '../../src/dm/targets/thin';
import { DmIoctlError } from '../../src/errors';
import { native } from '../../src/native/binding';
import { ThinPool } from '../../src/pool/thin-pool';
import type { ThinMetadata } from '../../src/thin/metadata';
import { type DmSandbox, MiB, type LoopDevice, run } from './helpers';

export const REPO = join(__dirname, '..', '..');
/** The built CLI (run-vm-tests.mjs rebuilds dist/ when stale). */
export const CLI = join(REPO, 'dist', 'cli', 'main.js');
/** The built library, for child `node -e` scripts (no jest transform there). */
export const DIST = join(REPO, 'dist');

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` every `everyMs` until it returns a truthy value; throws after `timeoutMs`. */
export async function waitFor<T>(what: string, cond: () => Promise<T> | T, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ------------------------------------------------------------------ ioctl trace

export interface IoctlCall {
  ioctl: string;
  /** Device name in the request. */
  name: string;
  flags: number;
  /** DM_TARGET_MSG text. */
  message?: string;
}

/** A DeviceMapper over the native ioctl that records every request. */
export function tracingDeviceMapper(): { dm: DeviceMapper; calls: IoctlCall[] } {
  const calls: IoctlCall[] = [];
  const dm = new DeviceMapper({
    transport: (cmd, req) => {
      const h = decodeHeader(req);
      const c: IoctlCall = { ioctl: CMD_NAMES[cmd], name: h.name, flags: h.flags };
      if (cmd === Cmd.TARGET_MSG) {
        const at = DATA_START + TARGET_MSG.message;
        c.message = req.toString('utf8', at, req.indexOf(0, at));
      }
      calls.push(c);
      return native().dmIoctl(cmd, req);
    },
    syncTransport: (cmd, req) => native().dmIoctlSync(cmd, req),
  });
  return { dm, calls };
}

// ------------------------------------------------------------------ devices

/** One-target table covering `length` sectors. */
export function oneTarget(length: number, type: string, params: string): DmTarget[] {
  return [{ start: 0, length, type, params } as DmTarget];
}

export interface TestPool {
  pool: ThinPool;
  name: string;
  /** Path of the metadata device (a loop, or /dev/mapper/<meta> with `metaVia: 'dm'`). */
  metaPath: string;
  /** dm name of the metadata device when `metaVia: 'dm'` (its table can be swapped). */
  metaName?: string;
  metaLoop: LoopDevice;
  metaSectors: number;
  dataPath: string;
  dataSectors: number;
  blockSectors: number;
  dm: DeviceMapper;
}

export interface TestPoolOptions {
  metaBytes?: number;
  /** Data device size (default 64 MiB). */
  dataBytes?: number;
  /** 'loop' (default) or 'zero' (a dm `zero` target: free writes, reads zeros). */
  data?: 'loop' | 'zero';
  /** 'loop' (default): the pool uses the loop device; 'dm': a linear dm device over it whose table tests can swap. */
  metaVia?: 'loop' | 'dm';
  blockSectors?: number;
  lowWaterMark?: number;
  features?: ThinPoolFeature[];
  dm?: DeviceMapper;
  label?: string;
}

/** A pool made with ThinPool.create, every device registered with the sandbox. */
export async function createTestPool(sb: DmSandbox, o: TestPoolOptions = {}): Promise<TestPool> {
  const dm = o.dm ?? new DeviceMapper();
  const label = o.label ?? 'pool';
  const metaBytes = o.metaBytes ?? 8 * MiB;
  const dataBytes = o.dataBytes ?? 64 * MiB;
  const blockSectors = o.blockSectors ?? 128;
  const metaLoop = sb.loop(metaBytes, `${label}-meta`);
  const metaSectors = metaBytes / 512;
  let metaPath = metaLoop.path;
  let metaName: string | undefined;
  if (o.metaVia === 'dm') {
    metaName = sb.adopt(`${label}-meta`);
    await dm.createWithTable(metaName, oneTarget(metaSectors, 'linear', `${metaLoop.path} 0`));
    metaPath = `${dm.devDir}/${metaName}`;
  }
  const dataSectors = dataBytes / 512;
  let dataPath: string;
  if (o.data === 'zero') {
    const n = sb.adopt(`${label}-data`);
    await dm.createWithTable(n, oneTarget(dataSectors, 'zero', ''));
    dataPath = `${dm.devDir}/${n}`;
  } else {
    dataPath = sb.loop(dataBytes, `${label}-data`).path;
  }
  const name = sb.adopt(label);
  const pool = await ThinPool.create({
    name,
    metadataDev: metaPath,
    dataDev: dataPath,
    dataBlockSize: sectors(blockSectors),
    lowWaterMark: dataBlocks(o.lowWaterMark ?? 0),
    features: o.features,
    dm,
  });
  return { pool, name, metaPath, metaName, metaLoop, metaSectors, dataPath, dataSectors, blockSectors, dm };
}

/** Swaps a device's table through the library: load, then resume (which suspends and swaps). */
export async function swapTable(dm: DeviceMapper, name: string, targets: DmTarget[]): Promise<void> {
  await dm.loadTable(name, targets);
  await dm.resume(name);
}

/**
 * Runs a shell script (one spawn: forks are slow under emulation), with
 * positional arguments $1...; returns stdout.
 */
export function sh(script: string, args: (string | number)[] = [], opts: { allowFail?: boolean; timeoutMs?: number } = {}) {
  return run('sh', ['-c', script, 'sh', ...args.map(String)], opts);
}

/** Writes `count` blocks of `bs` bytes from `src` (default /dev/urandom) with O_DIRECT at block `seek`. */
export function ddCmd(dev: string, o: { bs: number; seek: number; count: number; src?: string; skip?: number }): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return `dd if=${q(o.src ?? '/dev/urandom')} of=${q(dev)} bs=${o.bs} seek=${o.seek} count=${o.count}${o.skip ? ` skip=${o.skip}` : ''} oflag=direct status=none`;
}

/** sha256 of [offset, offset+length) of a device read with O_DIRECT (4 KiB aligned). */
export async function sha256OfDevice(path: string, offsetBytes: number, lengthBytes: number): Promise<string> {
  if (offsetBytes % 4096 || lengthBytes % 4096) throw new Error('sha256OfDevice: 4 KiB alignment');
  const r = new (native().BlockReader)();
  await r.open(path, 'always', false);
  try {
    const h = createHash('sha256');
    const first = offsetBytes / 4096;
    const n = lengthBytes / 4096;
    for (let i = 0; i < n; i += 1024) {
      const blocks = Float64Array.from({ length: Math.min(1024, n - i) }, (_, k) => first + i + k);
      h.update((await r.read(4096, blocks, false)).data);
    }
    return h.digest('hex');
  } finally {
    r.close();
  }
}

// ------------------------------------------------------------------ writer

export interface Writer {
  readonly pid: number;
  /** Still running (it stops by itself only on an error). */
  readonly running: boolean;
  /** dd runs completed so far. */
  readonly writes: number;
  /** Kills the writer's process group and waits for it; returns its stderr. */
  stop(): Promise<string>;
}

/**
 * A background writer that keeps the pool's metadata changing: a shell loop
 * of `dd oflag=direct` (zeros), each writing one chunk of `chunkBytes` at
 * byte `first + i*strideBytes` of `dev`, for `chunks` chunks; then it
 * discards the whole region (so the next pass provisions again: allocations
 * and frees, bounded space) and starts over. Prints a dot per dd.
 */
export function startWriter(dev: string, o: { firstBytes: number; chunkBytes: number; strideBytes: number; chunks: number; discard?: boolean }): Writer {
  const script = `
    dev=$1 first=$2 chunk=$3 stride=$4 chunks=$5 discard=$6
    while :; do
      i=0
      while [ $i -lt $chunks ]; do
        dd if=/dev/zero of="$dev" bs="$chunk" seek=$(( (first + i * stride) / chunk )) count=1 oflag=direct status=none || exit 1
        printf .
        i=$((i + 1))
      done
      if [ "$discard" = 1 ]; then blkdiscard -o "$first" -l $((chunks * stride)) "$dev" || exit 2; fi
    done`;
  if (o.firstBytes % o.chunkBytes || o.strideBytes % o.chunkBytes) throw new Error('startWriter: offsets must be multiples of the chunk');
  const args = [dev, o.firstBytes, o.chunkBytes, o.strideBytes, o.chunks, o.discard === false ? 0 : 1].map(String);
  const child: ChildProcess = spawn('sh', ['-c', script, 'writer', ...args], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let writes = 0;
  child.stdout!.on('data', (d: Buffer) => (writes += d.length));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const done = new Promise<void>((res) => child.on('exit', () => ((exited = true), res())));
  return {
    pid: child.pid!,
    get running() {
      return !exited;
    },
    get writes() {
      return writes;
    },
    async stop() {
      if (!exited) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      await done;
      return stderr;
    },
  };
}

// ------------------------------------------------------------------ metadata views

export interface Run {
  origin: number;
  data: number;
  length: number;
  time: number;
}

export interface DeviceView {
  devId: number;
  mappedBlocks: number;
  transaction: string;
  creationTime: number;
  snapTime: number;
  runs: Run[];
}

/** Pool metadata in one shape for thin_dump XML and the library. */
export interface MetadataView {
  superblock: { time: number; transaction: string; flags: number; version: number; dataBlockSize: number; nrDataBlocks: number };
  devices: DeviceView[];
}

/** Merges adjacent runs (consecutive origin and data blocks, same time), as thin_dump's range_mapping does. */
export function coalesce(runs: readonly Run[]): Run[] {
  const out: Run[] = [];
  for (const r of [...runs].sort((a, b) => a.origin - b.origin)) {
    const p = out[out.length - 1];
    if (p && p.origin + p.length === r.origin && p.data + p.length === r.data && p.time === r.time) p.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

function attrs(tag: string): Record<string, string> {
  const a: Record<string, string> = {};
  for (const m of tag.matchAll(/(\w+)="([^"]*)"/g)) a[m[1]] = m[2];
  return a;
}

/** thin_dump XML (also dmthin dump's) as a MetadataView. */
export function parseThinDumpXml(xml: string): MetadataView {
  const sbTag = /<superblock\s[^>]*>/.exec(xml);
  if (!sbTag) throw new Error(`no <superblock> in thin_dump output: ${xml.slice(0, 200)}`);
  const s = attrs(sbTag[0]);
  const view: MetadataView = {
    superblock: {
      time: Number(s.time),
      transaction: s.transaction,
      flags: Number(s.flags),
      version: Number(s.version),
      dataBlockSize: Number(s.data_block_size),
      nrDataBlocks: Number(s.nr_data_blocks),
    },
    devices: [],
  };
  for (const m of xml.matchAll(/<device\s([^>]*)>([\s\S]*?)<\/device>/g)) {
    const d = attrs(m[1]);
    const runs: Run[] = [];
    for (const r of m[2].matchAll(/<(range|single)_mapping\s([^>]*)\/>/g)) {
      const a = attrs(r[2]);
      if (r[1] === 'range') runs.push({ origin: Number(a.origin_begin), data: Number(a.data_begin), length: Number(a.length), time: Number(a.time) });
      else runs.push({ origin: Number(a.origin_block), data: Number(a.data_block), length: 1, time: Number(a.time) });
    }
    view.devices.push({
      devId: Number(d.dev_id),
      mappedBlocks: Number(d.mapped_blocks),
      transaction: d.transaction,
      creationTime: Number(d.creation_time),
      snapTime: Number(d.snap_time),
      runs: coalesce(runs),
    });
  }
  return view;
}

/** The same view read through the library. */
export async function libraryView(md: ThinMetadata): Promise<MetadataView> {
  const sb = md.superblock;
  const view: MetadataView = {
    superblock: {
      time: sb.time,
      transaction: String(sb.transactionId),
      flags: sb.flags,
      version: sb.version,
      dataBlockSize: sb.dataBlockSize,
      nrDataBlocks: md.nrDataBlocks,
    },
    devices: [],
  };
  for (const [id, d] of await md.devices()) {
    const runs: Run[] = [];
    for await (const r of md.mappings(id)) runs.push({ origin: Number(r.originBegin), data: r.dataBegin, length: r.length, time: r.time });
    view.devices.push({
      devId: id,
      mappedBlocks: Number(d.mappedBlocks),
      transaction: String(d.transactionId),
      creationTime: d.creationTime,
      snapTime: d.snapshottedTime,
      runs: coalesce(runs),
    });
  }
  return view;
}

/** Number of mapped blocks in a device view. */
export function mappedIn(d: DeviceView | undefined): number {
  return d ? d.runs.reduce((n, r) => n + r.length, 0) : 0;
}

// ------------------------------------------------------------------ status vs dmsetup

/** The target's fields of a `dmsetup status|table` line ("<start> <len> <type> fields..."). */
export function dmsetupFields(line: string): string[] {
  return line.trim().split(/\s+/).slice(3);
}

/**
 * What the typed pool status must be for a `dmsetup status` line, written
 * out independently of the library's parser (field by field).
 */
export function expectedPoolStatus(dmsetupLine: string): ThinPoolStatus {
  const f = dmsetupFields(dmsetupLine);
  if (f.length === 1 && f[0] === 'Fail') return { kind: 'fail' };
  if (f.length === 1 && f[0] === 'Error') return { kind: 'error' };
  const [um, tm] = f[1].split('/').map(Number);
  const [ud, td] = f[2].split('/').map(Number);
  return {
    kind: 'working',
    transactionId: BigInt(f[0]),
    usedMetadata: um,
    totalMetadata: tm,
    usedData: ud,
    totalData: td,
    heldMetadataRoot: f[3] === '-' ? null : Number(f[3]),
    mode: f[4],
    discard: f[5],
    noSpacePolicy: f[6] === 'queue_if_no_space' ? 'queue' : f[6] === 'error_if_no_space' ? 'error' : f[6],
    needsCheck: f[7] === 'needs_check' ? true : f[7] === '-' ? false : (f[7] as never),
    metadataLowWatermark: Number(f[8]),
    extra: f.slice(9),
  } as ThinPoolStatus;
}

export function expectedThinStatus(dmsetupLine: string): ThinStatus {
  const f = dmsetupFields(dmsetupLine);
  if (f.length === 1 && f[0] === 'Fail') return { kind: 'fail' };
  if (f.length === 1 && f[0] === 'Error') return { kind: 'error' };
  return { kind: 'working', mappedSectors: Number(f[0]), highestMappedSector: f[1] === '-' ? null : Number(f[1]) } as ThinStatus;
}

/**
 * `dmsetup status` (or `table`) of every device in one spawn: name -> line
 * ("<start> <len> <type> fields..."; single-target devices only).
 */
export function dmsetupAll(what: 'status' | 'table'): Map<string, string> {
  const out = run('dmsetup', [what]).stdout;
  const m = new Map<string, string>();
  for (const l of out.split('\n')) {
    const i = l.indexOf(': ');
    if (i > 0) m.set(l.slice(0, i), l.slice(i + 2));
  }
  return m;
}

/** `dmsetup status` of the named devices (one spawn): name -> line. */
export function dmsetupStatus(...names: string[]): Map<string, string> {
  const all = dmsetupAll('status');
  for (const n of names) if (!all.has(n)) throw new Error(`dmsetup status does not list ${n}`);
  return all;
}

/** `dmsetup table` of one device (first line). */
export function dmsetupTable(name: string): string {
  return run('dmsetup', ['table', name]).stdout.trim();
}

/** A promise that resolves to `value` after `ms` without keeping the process alive (for races). */
export function after<T>(ms: number, value: T): Promise<T> {
  return new Promise((res) => setTimeout(() => res(value), ms).unref());
}

// ------------------------------------------------------------------ errors

export interface ExpectedIoctlError {
  code: string;
  ioctl: string;
  device?: string;
  targetMessage?: string;
}

/** Awaits a rejection and checks it is the DmIoctlError described (errno from the code). */
export async function expectIoctlError(p: Promise<unknown>, want: ExpectedIoctlError): Promise<DmIoctlError> {
  const e = await p.then(
    () => {
      throw new Error(`expected ${want.ioctl} to fail with ${want.code}, but it succeeded`);
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(DmIoctlError);
  const d = e as DmIoctlError;
  const errno = -(constants.errno as Record<string, number>)[want.code];
  expect({ code: d.code, errno: d.errno, syscall: d.syscall, ioctl: d.ioctl, device: d.device, targetMessage: d.targetMessage }).toEqual({
    code: want.code,
    errno,
    syscall: 'ioctl',
    ioctl: want.ioctl,
    device: want.device,
    targetMessage: want.targetMessage,
  });
  expect(d.message).toContain(want.code);
  return d;
}
