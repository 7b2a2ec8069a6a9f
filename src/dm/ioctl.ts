/**
 * The device-mapper ioctl ABI (<linux/dm-ioctl.h>, interface 4): byte layout
 * of struct dm_ioctl and the records that follow it, and pure encoders and
 * decoders for them. Nothing here talks to the kernel; the native layer
 * exports the header's own offsets and `assertNativeLayout` compares.
 *
 * All integers are little-endian: dm ioctls are host-endian and this package
 * only builds on little-endian Linux targets (x86-64, arm64).
 */
import { DmParseError, DmthinError, UsageError } from '../errors';
import type { NativeDmConstants } from '../native/binding';
import { type Sectors, sectors } from '../units';

// ------------------------------------------------------------------ layout

/** struct dm_ioctl: field offsets and size. Results start at DATA_START. */
export const IOCTL = {
  version: 0,
  data_size: 12,
  data_start: 16,
  target_count: 20,
  open_count: 24,
  flags: 28,
  event_nr: 32,
  padding: 36,
  dev: 40,
  name: 48,
  uuid: 176,
  data: 305,
  size: 312,
} as const;

/** Payloads and results start right after the (8-aligned) struct. */
export const DATA_START = IOCTL.size;

export const TARGET_SPEC = { sector_start: 0, length: 8, status: 16, next: 20, target_type: 24, size: 40 } as const;
export const TARGET_DEPS = { count: 0, dev: 8, size: 8 } as const;
export const NAME_LIST = { dev: 0, next: 8, name: 12, size: 16 } as const;
export const TARGET_VERSIONS = { next: 0, version: 4, name: 16, size: 16 } as const;
export const TARGET_MSG = { sector: 0, message: 8, size: 8 } as const;

export const DM_NAME_LEN = 128;
export const DM_UUID_LEN = 129;
export const DM_MAX_TYPE_NAME = 16;
/** Longest name / uuid / target type in bytes (the fields hold a NUL too). */
export const NAME_MAX = DM_NAME_LEN - 1;
export const UUID_MAX = DM_UUID_LEN - 1;
export const TYPE_NAME_MAX = DM_MAX_TYPE_NAME - 1;

/** Command numbers (the header's DM_*_CMD enum). */
/** The dm ioctl commands (their numbers in the kernel's dm-ioctl.h). */
export const Cmd = {
  /** DM_VERSION: the interface version. */
  VERSION: 0,
  /** DM_REMOVE_ALL: remove every device. */
  REMOVE_ALL: 1,
  /** DM_LIST_DEVICES: list devices. */
  LIST_DEVICES: 2,
  /** DM_DEV_CREATE: create a device. */
  DEV_CREATE: 3,
  /** DM_DEV_REMOVE: remove a device. */
  DEV_REMOVE: 4,
  /** DM_DEV_RENAME: rename a device or set its uuid. */
  DEV_RENAME: 5,
  /** DM_DEV_SUSPEND: suspend or resume a device. */
  DEV_SUSPEND: 6,
  /** DM_DEV_STATUS: a device's info. */
  DEV_STATUS: 7,
  /** DM_DEV_WAIT: wait for a device event. */
  DEV_WAIT: 8,
  /** DM_TABLE_LOAD: load an inactive table. */
  TABLE_LOAD: 9,
  /** DM_TABLE_CLEAR: clear the inactive table. */
  TABLE_CLEAR: 10,
  /** DM_TABLE_DEPS: a table's underlying devices. */
  TABLE_DEPS: 11,
  /** DM_TABLE_STATUS: target status or table lines. */
  TABLE_STATUS: 12,
  /** DM_LIST_VERSIONS: loaded target types. */
  LIST_VERSIONS: 13,
  /** DM_TARGET_MSG: send a target message. */
  TARGET_MSG: 14,
  /** DM_DEV_SET_GEOMETRY: set the geometry. */
  DEV_SET_GEOMETRY: 15,
  /** DM_DEV_ARM_POLL: arm the control fd's poll. */
  DEV_ARM_POLL: 16,
  /** DM_GET_TARGET_VERSION: one target type's version. */
  GET_TARGET_VERSION: 17,
} as const;
export type Cmd = (typeof Cmd)[keyof typeof Cmd];

/** Command name as the kernel header spells it, for errors: 14 -> 'DM_TARGET_MSG'. */
export const CMD_NAMES: readonly string[] = [
  'DM_VERSION',
  'DM_REMOVE_ALL',
  'DM_LIST_DEVICES',
  'DM_DEV_CREATE',
  'DM_DEV_REMOVE',
  'DM_DEV_RENAME',
  'DM_DEV_SUSPEND',
  'DM_DEV_STATUS',
  'DM_DEV_WAIT',
  'DM_TABLE_LOAD',
  'DM_TABLE_CLEAR',
  'DM_TABLE_DEPS',
  'DM_TABLE_STATUS',
  'DM_LIST_VERSIONS',
  'DM_TARGET_MSG',
  'DM_DEV_SET_GEOMETRY',
  'DM_DEV_ARM_POLL',
  'DM_GET_TARGET_VERSION',
];

/** Commands whose results follow the struct (and may come back BUFFER_FULL). */
export const RETURNS_DATA: ReadonlySet<Cmd> = new Set<Cmd>([
  Cmd.LIST_DEVICES,
  Cmd.DEV_WAIT,
  Cmd.TABLE_DEPS,
  Cmd.TABLE_STATUS,
  Cmd.LIST_VERSIONS,
  Cmd.TARGET_MSG,
  Cmd.GET_TARGET_VERSION,
]);

/** dm_ioctl.flags bits. */
export const Flag = {
  READONLY: 1 << 0,
  SUSPEND: 1 << 1,
  PERSISTENT_DEV: 1 << 3,
  STATUS_TABLE: 1 << 4,
  ACTIVE_PRESENT: 1 << 5,
  INACTIVE_PRESENT: 1 << 6,
  BUFFER_FULL: 1 << 8,
  SKIP_BDGET: 1 << 9,
  SKIP_LOCKFS: 1 << 10,
  NOFLUSH: 1 << 11,
  QUERY_INACTIVE_TABLE: 1 << 12,
  UEVENT_GENERATED: 1 << 13,
  UUID: 1 << 14,
  SECURE_DATA: 1 << 15,
  DATA_OUT: 1 << 16,
  DEFERRED_REMOVE: 1 << 17,
  INTERNAL_SUSPEND: 1 << 18,
  IMA_MEASUREMENT: 1 << 19,
} as const;

/** dm_name_list flags (after event_nr), interface 4.45+. */
export const NameListFlag = { HAS_UUID: 1, DOESNT_HAVE_UUID: 2 } as const;

/** Interface version: [major, minor, patch]. */
export type DmVersion = readonly [number, number, number];

/**
 * The oldest interface version each command exists in. A request carries the
 * minimum it needs (the kernel rejects a minor above its own with EINVAL and
 * always answers with its own version).
 */
export const MIN_VERSION: Readonly<Record<Cmd, DmVersion>> = {
  [Cmd.VERSION]: [4, 0, 0],
  [Cmd.REMOVE_ALL]: [4, 0, 0],
  [Cmd.LIST_DEVICES]: [4, 0, 0],
  [Cmd.DEV_CREATE]: [4, 0, 0],
  [Cmd.DEV_REMOVE]: [4, 0, 0],
  [Cmd.DEV_RENAME]: [4, 0, 0],
  [Cmd.DEV_SUSPEND]: [4, 0, 0],
  [Cmd.DEV_STATUS]: [4, 0, 0],
  [Cmd.DEV_WAIT]: [4, 0, 0],
  [Cmd.TABLE_LOAD]: [4, 0, 0],
  [Cmd.TABLE_CLEAR]: [4, 0, 0],
  [Cmd.TABLE_DEPS]: [4, 0, 0],
  [Cmd.TABLE_STATUS]: [4, 0, 0],
  [Cmd.LIST_VERSIONS]: [4, 1, 0],
  [Cmd.TARGET_MSG]: [4, 2, 0],
  [Cmd.DEV_SET_GEOMETRY]: [4, 6, 0],
  [Cmd.DEV_ARM_POLL]: [4, 37, 0],
  [Cmd.GET_TARGET_VERSION]: [4, 41, 0],
};

/** dm_name_list carries event_nr (and the flags word) from 4.37 on. */
export const NAME_LIST_EVENT_NR_SINCE: DmVersion = [4, 37, 0];

export function versionAtLeast(v: DmVersion, min: DmVersion): boolean {
  for (let i = 0; i < 3; i++) if (v[i] !== min[i]) return v[i] > min[i];
  return true;
}

/**
 * Compares this file's layout with the one the addon was compiled against.
 * Throws if they differ (a header this code was not written for).
 */
export function assertNativeLayout(c: NativeDmConstants): void {
  const expect: Record<string, Record<string, number>> = {
    dm_ioctl: IOCTL,
    dm_target_spec: TARGET_SPEC,
    dm_target_deps: TARGET_DEPS,
    dm_name_list: NAME_LIST,
    dm_target_versions: TARGET_VERSIONS,
    dm_target_msg: TARGET_MSG,
  };
  const bad: string[] = [];
  for (const [struct, fields] of Object.entries(expect)) {
    const got = c.layout[struct];
    for (const [f, off] of Object.entries(fields)) if (got?.[f] !== off) bad.push(`${struct}.${f}: ${off} vs header ${got?.[f]}`);
  }
  CMD_NAMES.forEach((n, i) => {
    if (c.commands[n] !== i) bad.push(`${n}: ${i} vs header ${c.commands[n]}`);
  });
  for (const [k, v] of Object.entries(Flag)) {
    const name = k === 'DEFERRED_REMOVE' ? 'DM_DEFERRED_REMOVE' : `DM_${k}_FLAG`;
    if (c.flags[name] !== undefined && c.flags[name] !== v) bad.push(`${name}: ${v} vs header ${c.flags[name]}`);
  }
  if (c.nameLen !== DM_NAME_LEN || c.uuidLen !== DM_UUID_LEN || c.maxTypeName !== DM_MAX_TYPE_NAME) bad.push('name/uuid/type lengths');
  if (c.headerVersion.major !== 4) bad.push(`interface major ${c.headerVersion.major}`);
  if (bad.length) throw new DmthinError('EPROTO', `dm-ioctl layout differs from <linux/dm-ioctl.h>: ${bad.join('; ')}`);
}

// ------------------------------------------------------------------ dev_t

/** A block device number. */
export interface DevNum {
  /** Major number (12 bits). */
  major: number;
  /** Minor number (20 bits). */
  minor: number;
}

/** Kernel dev_t limits: 12-bit major, 20-bit minor. */
export const MAJOR_MAX = 0xfff;
export const MINOR_MAX = 0xfffff;

/** huge_encode_dev: minor low byte, major, then the minor's high bits. */
export function encodeDev(d: DevNum): bigint {
  checkDev(d);
  const lo = d.minor & 0xff;
  return BigInt(lo + d.major * 0x100 + (d.minor - lo) * 0x1000);
}

export function decodeDev(v: bigint): DevNum {
  return { major: Number((v & 0xfff00n) >> 8n), minor: Number((v & 0xffn) | ((v >> 12n) & 0xfff00n)) };
}

export function formatDev(d: DevNum): string {
  return `${d.major}:${d.minor}`;
}

export function checkDev(d: DevNum): void {
  if (d === null || typeof d !== 'object') throw new UsageError(`a device number must be { major, minor }, got ${d === null ? 'null' : typeof d === 'string' ? JSON.stringify(d) : typeof d}`);
  if (!Number.isInteger(d.major) || d.major < 0 || d.major > MAJOR_MAX || !Number.isInteger(d.minor) || d.minor < 0 || d.minor > MINOR_MAX)
    throw new UsageError(`invalid device number ${d.major}:${d.minor} (major 0..${MAJOR_MAX}, minor 0..${MINOR_MAX})`);
}

// ------------------------------------------------------------------ names

function checkString(s: unknown, what: string, max: number): string {
  if (typeof s !== 'string' || s.length === 0) throw new UsageError(`${what} must be a non-empty string`);
  if (s.includes('\0')) throw new UsageError(`${what} must not contain NUL`);
  const n = Buffer.byteLength(s, 'utf8');
  if (n > max) throw new UsageError(`${what} is ${n} bytes, the limit is ${max}`, { device: s.slice(0, 64) });
  return s;
}

/** A name used to look a device up: 1..127 bytes, no NUL. */
export function checkName(name: unknown): string {
  return checkString(name, 'device name', NAME_MAX);
}

/**
 * A name a device is created or renamed to. The kernel also refuses '/',
 * '.', '..' and 'control', which keeps /dev/mapper/<name> a safe path.
 */
export function checkNewName(name: unknown): string {
  const s = checkName(name);
  if (s.includes('/')) throw new UsageError(`device name must not contain '/': ${JSON.stringify(s)}`, { device: s });
  if (s === '.' || s === '..' || s === 'control') throw new UsageError(`device name cannot be ${JSON.stringify(s)}`, { device: s });
  return s;
}

/** 1..128 bytes, no NUL. */
export function checkUuid(uuid: unknown): string {
  return checkString(uuid, 'device uuid', UUID_MAX);
}

/** A target type ("thin-pool"): 1..15 bytes, no NUL or whitespace. */
export function checkTargetType(type: unknown): string {
  const s = checkString(type, 'target type', TYPE_NAME_MAX);
  if (/\s/.test(s)) throw new UsageError(`target type must not contain whitespace: ${JSON.stringify(s)}`);
  return s;
}

// ------------------------------------------------------------------ request

/** Which device a request is about: the kernel wants exactly one of these. */
export type DeviceId =
  | {
      /** The dm device name. */
      name: string;
      /** Not with `name`. */
      uuid?: never;
      /** Not with `name`. */
      dev?: never;
    }
  | {
      /** The dm device uuid. */
      uuid: string;
      /** Not with `uuid`. */
      name?: never;
      /** Not with `uuid`. */
      dev?: never;
    }
  | {
      /** The device number. */
      dev: DevNum;
      /** Not with `dev`. */
      name?: never;
      /** Not with `dev`. */
      uuid?: never;
    };
/** A device name, or one explicit identifier. */
export type DeviceRef = string | DeviceId;

/** Normalises and validates a DeviceRef: exactly one identifier. */
export function resolveDeviceRef(ref: DeviceRef): DeviceId {
  if (typeof ref === 'string') return { name: checkName(ref) };
  if (ref === null || typeof ref !== 'object') throw new UsageError('device must be a name or { name } | { uuid } | { dev }');
  const r = ref as { name?: unknown; uuid?: unknown; dev?: unknown };
  const set = (['name', 'uuid', 'dev'] as const).filter((k) => r[k] !== undefined);
  if (set.length !== 1) throw new UsageError(`identify a device by exactly one of name, uuid or dev (got ${set.length ? set.join(' and ') : 'none'})`);
  if (r.name !== undefined) return { name: checkName(r.name) };
  if (r.uuid !== undefined) return { uuid: checkUuid(r.uuid) };
  const d = r.dev as DevNum;
  if (d === null || typeof d !== 'object') throw new UsageError('dev must be { major, minor }');
  checkDev(d);
  return { dev: { major: d.major, minor: d.minor } };
}

/** Human label for errors: the name, the uuid, or major:minor. */
export function deviceLabel(id: DeviceId | undefined): string | undefined {
  if (!id) return undefined;
  if (id.name !== undefined) return id.name;
  if (id.uuid !== undefined) return id.uuid;
  return formatDev(id.dev!);
}

export interface RequestFields {
  version: DmVersion;
  flags?: number;
  eventNr?: number;
  targetCount?: number;
  /** Lookup key, or (DEV_CREATE) the new device's name/uuid/minor. */
  name?: string;
  uuid?: string;
  dev?: bigint;
}

/**
 * struct dm_ioctl followed by `payload` at DATA_START. data_size is the whole
 * length; the native layer grows it for result-returning commands.
 */
export function encodeRequest(f: RequestFields, payload?: Uint8Array): Buffer {
  const len = IOCTL.size + (payload ? align8(payload.length) : 0);
  const b = Buffer.alloc(len);
  for (let i = 0; i < 3; i++) b.writeUInt32LE(f.version[i], IOCTL.version + 4 * i);
  b.writeUInt32LE(len, IOCTL.data_size);
  b.writeUInt32LE(DATA_START, IOCTL.data_start);
  b.writeUInt32LE(f.targetCount ?? 0, IOCTL.target_count);
  b.writeUInt32LE((f.flags ?? 0) >>> 0, IOCTL.flags);
  b.writeUInt32LE((f.eventNr ?? 0) >>> 0, IOCTL.event_nr);
  b.writeBigUInt64LE(f.dev ?? 0n, IOCTL.dev);
  if (f.name !== undefined) writeCString(b, IOCTL.name, DM_NAME_LEN, f.name, 'device name');
  if (f.uuid !== undefined) writeCString(b, IOCTL.uuid, DM_UUID_LEN, f.uuid, 'device uuid');
  if (payload) b.set(payload, DATA_START);
  return b;
}

/** Request fields that identify `id`. */
export function idFields(id: DeviceId): Pick<RequestFields, 'name' | 'uuid' | 'dev'> {
  if (id.name !== undefined) return { name: id.name };
  if (id.uuid !== undefined) return { uuid: id.uuid };
  return { dev: encodeDev(id.dev!) };
}

function writeCString(b: Buffer, off: number, field: number, s: string, what: string): void {
  const bytes = Buffer.from(s, 'utf8');
  if (bytes.length >= field) throw new UsageError(`${what} is ${bytes.length} bytes, the limit is ${field - 1}`);
  if (bytes.includes(0)) throw new UsageError(`${what} must not contain NUL`);
  bytes.copy(b, off);
}

/** A NUL-terminated string padded to 8 (rename's new name, geometry). */
export function encodeCString(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  if (bytes.includes(0)) throw new UsageError('string must not contain NUL');
  const b = Buffer.alloc(align8(bytes.length + 1));
  bytes.copy(b);
  return b;
}

/** One line of a table: what TABLE_LOAD takes and TABLE_STATUS returns. */
/** One target of a table: a sector range, its target type and its parameters. */
export interface DmTarget {
  /** First sector of the range. */
  start: Sectors;
  /** Length of the range. */
  length: Sectors;
  /** Target type (`thin-pool`, `thin`, `linear`...). */
  type: string;
  /** The table parameters, or the status line, as text. */
  params: string;
}

/**
 * dm_target_spec records for TABLE_LOAD. Here `next` is the distance from
 * this spec to the following one (TABLE_STATUS measures from the first spec).
 * The table must start at 0, be contiguous and have no empty target: the
 * kernel would refuse it with a bare EINVAL and the reason only in dmesg.
 */
export function encodeTargetSpecs(targets: readonly DmTarget[]): Buffer {
  if (!Array.isArray(targets) || targets.length === 0) throw new UsageError('a table needs at least one target');
  const parts: Buffer[] = [];
  let expectStart = 0;
  targets.forEach((t, i) => {
    checkU64Safe(t.start, `target ${i} start`);
    checkU64Safe(t.length, `target ${i} length`);
    if (t.length === 0) throw new UsageError(`target ${i} has length 0`);
    if (t.start !== expectStart) throw new UsageError(`target ${i} starts at ${t.start}, expected ${expectStart} (tables start at 0 and have no gaps)`);
    expectStart = t.start + t.length;
    if (!Number.isSafeInteger(expectStart)) throw new UsageError('table length overflows');
    const type = checkTargetType(t.type);
    if (typeof t.params !== 'string') throw new UsageError(`target ${i} params must be a string`);
    const params = Buffer.from(t.params, 'utf8');
    if (params.includes(0)) throw new UsageError(`target ${i} params must not contain NUL`);
    const size = align8(TARGET_SPEC.size + params.length + 1);
    const rec = Buffer.alloc(size);
    rec.writeBigUInt64LE(BigInt(t.start), TARGET_SPEC.sector_start);
    rec.writeBigUInt64LE(BigInt(t.length), TARGET_SPEC.length);
    rec.writeUInt32LE(size, TARGET_SPEC.next);
    rec.write(type, TARGET_SPEC.target_type, 'utf8');
    params.copy(rec, TARGET_SPEC.size);
    parts.push(rec);
  });
  return Buffer.concat(parts);
}

/** struct dm_target_msg: sector, then the NUL-terminated message. */
export function encodeTargetMsg(sector: Sectors, message: string): Buffer {
  checkU64Safe(sector, 'message sector');
  if (typeof message !== 'string' || message.length === 0) throw new UsageError('target message must be a non-empty string');
  const text = Buffer.from(message, 'utf8');
  if (text.includes(0)) throw new UsageError('target message must not contain NUL');
  const b = Buffer.alloc(align8(TARGET_MSG.size + text.length + 1));
  b.writeBigUInt64LE(BigInt(sector), TARGET_MSG.sector);
  text.copy(b, TARGET_MSG.message);
  return b;
}

// ------------------------------------------------------------------ result

/** struct dm_ioctl as the kernel returned it. */
export interface IoctlHeader {
  /** The kernel's interface version. */
  version: DmVersion;
  dataSize: number;
  dataStart: number;
  targetCount: number;
  openCount: number;
  flags: number;
  eventNr: number;
  dev: DevNum;
  name: string;
  uuid: string;
}

export function decodeHeader(b: Buffer): IoctlHeader {
  if (b.length < IOCTL.size) throw new DmParseError(`dm ioctl result is ${b.length} bytes, shorter than struct dm_ioctl`);
  return {
    version: [b.readUInt32LE(0), b.readUInt32LE(4), b.readUInt32LE(8)],
    dataSize: b.readUInt32LE(IOCTL.data_size),
    dataStart: b.readUInt32LE(IOCTL.data_start),
    targetCount: b.readUInt32LE(IOCTL.target_count),
    openCount: b.readInt32LE(IOCTL.open_count),
    flags: b.readUInt32LE(IOCTL.flags),
    eventNr: b.readUInt32LE(IOCTL.event_nr),
    dev: decodeDev(b.readBigUInt64LE(IOCTL.dev)),
    name: readCString(b, IOCTL.name, IOCTL.name + DM_NAME_LEN),
    uuid: readCString(b, IOCTL.uuid, IOCTL.uuid + DM_UUID_LEN),
  };
}

/**
 * The results area: [data_start, data_size). A data_size beyond the buffer
 * means the result was cut short (a BUFFER_FULL that was not retried, or a
 * truncated copy): refuse rather than decode half a record.
 */
export function resultArea(b: Buffer, h: IoctlHeader = decodeHeader(b)): Buffer {
  if (h.flags & Flag.BUFFER_FULL) throw new DmParseError('dm ioctl result is truncated (DM_BUFFER_FULL_FLAG set)');
  if (h.dataSize <= h.dataStart) return b.subarray(0, 0);
  if (h.dataStart < IOCTL.data) throw new DmParseError(`dm ioctl data_start ${h.dataStart} lies inside struct dm_ioctl`);
  if (h.dataSize > b.length) throw new DmParseError(`dm ioctl result claims ${h.dataSize} bytes but only ${b.length} arrived`);
  return b.subarray(h.dataStart, h.dataSize);
}

/**
 * TABLE_STATUS / DEV_WAIT results: `count` dm_target_spec records, each
 * `next` measured from the start of the results. The count comes from the
 * header; the last record's `next` is not 0, so it is no terminator.
 */
export function decodeTargetSpecs(res: Buffer, count: number): DmTarget[] {
  const out: DmTarget[] = [];
  let off = 0;
  for (let i = 0; i < count; i++) {
    if (off + TARGET_SPEC.size > res.length) throw new DmParseError(`target ${i} of ${count} lies past the end of the results (${res.length} bytes)`);
    const start = readU64Safe(res, off + TARGET_SPEC.sector_start, 'target start');
    const length = readU64Safe(res, off + TARGET_SPEC.length, 'target length');
    const next = res.readUInt32LE(off + TARGET_SPEC.next);
    const type = readCString(res, off + TARGET_SPEC.target_type, off + TARGET_SPEC.target_type + DM_MAX_TYPE_NAME);
    const pStart = off + TARGET_SPEC.size;
    const nul = res.indexOf(0, pStart);
    if (nul < 0) throw new DmParseError(`target ${i} params are not NUL-terminated within the results`);
    out.push({ start: sectors(start), length: sectors(length), type, params: res.toString('utf8', pStart, nul) });
    if (i + 1 < count) {
      if (next <= off || next % 8 !== 0) throw new DmParseError(`target ${i} has a bad next offset ${next}`);
      off = next;
    }
  }
  return out;
}

/** One LIST_DEVICES entry. */
/** One device of DM_LIST_DEVICES. */
export interface DmListEntry {
  /** The dm device name. */
  name: string;
  /** Its device number. */
  dev: DevNum;
  /** The device's event counter (interface 4.37+), else undefined. */
  eventNr?: number;
  /** With `uuid: true` on 4.45+: the uuid, or null when the device has none.
   * undefined when the kernel did not say. */
  uuid?: string | null;
}

/**
 * dm_name_list records. Each `next` is relative to its own record, 0 on the
 * last. event_nr and a flags word sit 8-aligned after the name's NUL; a uuid
 * follows when DM_UUID_FLAG was asked for and flags has HAS_UUID. An empty
 * list is either no results or a single record with dev 0.
 */
export function decodeNameList(res: Buffer, kernel: DmVersion, uuidRequested: boolean): DmListEntry[] {
  const out: DmListEntry[] = [];
  if (res.length === 0) return out;
  const hasEventNr = versionAtLeast(kernel, NAME_LIST_EVENT_NR_SINCE);
  let off = 0;
  for (;;) {
    if (off + NAME_LIST.name > res.length) throw new DmParseError(`name list record at ${off} lies past the end of the results`);
    const devRaw = res.readBigUInt64LE(off + NAME_LIST.dev);
    const next = res.readUInt32LE(off + NAME_LIST.next);
    if (off === 0 && devRaw === 0n && next === 0) return out; // "no devices"
    const end = next === 0 ? res.length : off + next;
    if (end > res.length) throw new DmParseError(`name list record at ${off} has next ${next} past the end`);
    const nameStart = off + NAME_LIST.name;
    const nul = res.indexOf(0, nameStart);
    if (nul < 0 || nul >= end) throw new DmParseError(`name list record at ${off}: name is not NUL-terminated`);
    const e: DmListEntry = { name: res.toString('utf8', nameStart, nul), dev: decodeDev(devRaw) };
    const ev = align8(nul + 1);
    if (hasEventNr && ev + 8 <= end) {
      e.eventNr = res.readUInt32LE(ev);
      const flags = res.readUInt32LE(ev + 4);
      if (uuidRequested && flags & NameListFlag.HAS_UUID) {
        const u = res.indexOf(0, ev + 8);
        if (u < 0 || u >= end) throw new DmParseError(`name list record at ${off}: uuid is not NUL-terminated`);
        e.uuid = res.toString('utf8', ev + 8, u);
      } else if (uuidRequested && flags & NameListFlag.DOESNT_HAVE_UUID) {
        e.uuid = null;
      }
    }
    out.push(e);
    if (next === 0) return out;
    if (next < NAME_LIST.size) throw new DmParseError(`name list record at ${off} has a bad next offset ${next}`);
    off += next;
  }
}

/** A loaded target type and its version. */
/** A loaded target type and its version. */
export interface TargetVersion {
  /** Target type name (`thin-pool`...). */
  name: string;
  /** Its version. */
  version: DmVersion;
}

/** dm_target_versions records; `next` relative to the record, 0 on the last. */
export function decodeTargetVersions(res: Buffer): TargetVersion[] {
  const out: TargetVersion[] = [];
  let off = 0;
  while (off < res.length) {
    if (off + TARGET_VERSIONS.name > res.length) throw new DmParseError(`target version record at ${off} lies past the end of the results`);
    const next = res.readUInt32LE(off + TARGET_VERSIONS.next);
    const v = off + TARGET_VERSIONS.version;
    const end = next === 0 ? res.length : off + next;
    if (end > res.length) throw new DmParseError(`target version record at ${off} has next ${next} past the end`);
    const nul = res.indexOf(0, off + TARGET_VERSIONS.name);
    if (nul < 0 || nul >= end) throw new DmParseError(`target version record at ${off}: name is not NUL-terminated`);
    out.push({
      name: res.toString('utf8', off + TARGET_VERSIONS.name, nul),
      version: [res.readUInt32LE(v), res.readUInt32LE(v + 4), res.readUInt32LE(v + 8)],
    });
    if (next === 0) break;
    if (next < TARGET_VERSIONS.size) throw new DmParseError(`target version record at ${off} has a bad next offset ${next}`);
    off += next;
  }
  return out;
}

/** dm_target_deps: count, padding, then count huge-encoded dev_t. */
export function decodeDeps(res: Buffer): DevNum[] {
  if (res.length === 0) return [];
  if (res.length < TARGET_DEPS.size) throw new DmParseError(`deps result is ${res.length} bytes, shorter than struct dm_target_deps`);
  const count = res.readUInt32LE(TARGET_DEPS.count);
  if (TARGET_DEPS.dev + count * 8 > res.length) throw new DmParseError(`deps result lists ${count} devices but holds ${(res.length - TARGET_DEPS.dev) >> 3}`);
  const out: DevNum[] = [];
  for (let i = 0; i < count; i++) out.push(decodeDev(res.readBigUInt64LE(TARGET_DEPS.dev + 8 * i)));
  return out;
}

/** DM_TARGET_MSG output: a NUL-terminated string at data_start. */
export function decodeMessageOutput(res: Buffer): string {
  const nul = res.indexOf(0);
  if (nul < 0) throw new DmParseError('target message output is not NUL-terminated');
  return res.toString('utf8', 0, nul);
}

// ------------------------------------------------------------------ helpers

export function align8(n: number): number {
  return Math.ceil(n / 8) * 8; // not `& ~7`: that wraps past 2^31
}

function readCString(b: Buffer, start: number, end: number): string {
  const nul = b.indexOf(0, start);
  return b.toString('utf8', start, nul < 0 || nul > end ? end : nul);
}

function readU64Safe(b: Buffer, off: number, what: string): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DmParseError(`${what} ${v} exceeds 2^53`);
  return Number(v);
}

function checkU64Safe(n: unknown, what: string): void {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new UsageError(`${what} must be a non-negative safe integer`);
}
