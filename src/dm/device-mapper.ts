/**
 * DeviceMapper: one async method per dm ioctl. Requests carry the minimum
 * interface version their command needs; every failure is a DmIoctlError
 * with code/errno/ioctl/device (and targetMessage for DM_TARGET_MSG), except
 * a SetupError when device-mapper is missing (the control node does not open:
 * kind 'no-device-mapper') or privilege is (EACCES/EPERM: kind 'needs-root').
 *
 * udev: no cookies are used (event_nr stays 0), so with udev running its
 * rules create /dev/mapper links on resume as for any other dm device; we
 * just do not wait for them. Without udev (containers, initramfs, the test
 * VM), `nodes: 'auto'` makes /dev/mapper/<name> ourselves.
 */
import { existsSync } from 'node:fs';
import { lstat, mkdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { DmIoctlError, DmthinError, type ErrorFields, isPermissionCode, needsRootError, SetupError, SystemCallError, UsageError } from '../errors';
import { native } from '../native/binding';
import { type Sectors } from '../units';
import {
  CMD_NAMES,
  Cmd,
  type DeviceId,
  type DeviceRef,
  type DevNum,
  type DmListEntry,
  type DmTarget,
  type DmVersion,
  Flag,
  type IoctlHeader,
  MIN_VERSION,
  RETURNS_DATA,
  type RequestFields,
  type TargetVersion,
  assertNativeLayout,
  checkNewName,
  checkTargetType,
  checkUuid,
  decodeDeps,
  decodeHeader,
  decodeMessageOutput,
  decodeNameList,
  decodeTargetSpecs,
  decodeTargetVersions,
  deviceLabel,
  encodeCString,
  encodeDev,
  encodeRequest,
  encodeTargetMsg,
  encodeTargetSpecs,
  idFields,
  resolveDeviceRef,
  resultArea,
} from './ioctl';
import { type DmEventPoller, type EventWaitOptions, waitForEventChange } from './event-wait';

/** Sends one request (struct dm_ioctl + payload), resolves with the kernel's buffer. */
export type DmTransport = (command: Cmd, request: Buffer) => Promise<Buffer>;
/** The same, blocking the calling thread (exit paths only). */
export type DmSyncTransport = (command: Cmd, request: Buffer) => Buffer;

/** Options of a DeviceMapper: the control node, buffer cap, node handling, transport. */
export interface DeviceMapperOptions {
  /** Default /dev/mapper/control. */
  controlPath?: string;
  /** Cap for the BUFFER_FULL retry (default 64 MiB). */
  maxBufferSize?: number;
  /**
   * /dev/mapper/<name> nodes: 'auto' (default) makes and removes them only
   * when udev is not running; 'always'; 'never'.
   */
  nodes?: 'auto' | 'always' | 'never';
  /** Default /dev/mapper. */
  devDir?: string;
  /** Permission bits of the nodes we make. Default 0o600. */
  nodeMode?: number;
  /** Replaces the native ioctl (tests, tracing). */
  transport?: DmTransport;
  /** Replaces the blocking native ioctl used by targetMessageSync. */
  syncTransport?: DmSyncTransport;
  /** Replaces the addon's DM_DEV_ARM_POLL descriptor that wait() opens (tests). */
  eventPoller?: () => DmEventPoller;
}

/** A device's state, from the struct dm_ioctl the kernel returned. */
export interface DmDeviceInfo {
  /** The dm device name. */
  name: string;
  /** undefined when the device has no uuid. */
  uuid?: string;
  /** Its device number. */
  dev: DevNum;
  /** How many openers hold the device. */
  openCount: number;
  /** The device's event counter (see DeviceMapper.wait). */
  eventNr: number;
  /** Number of targets in the active table. */
  targetCount: number;
  /** The device is read-only. */
  readOnly: boolean;
  /** The device is suspended. */
  suspended: boolean;
  /** A table is live. */
  activeTable: boolean;
  /** A loaded table awaits a resume. */
  inactiveTable: boolean;
  /** Removal is deferred until the last close. */
  deferredRemove: boolean;
  /** Suspended by the kernel itself (e.g. under a pool's reload). */
  internalSuspend: boolean;
  /** Raw flags word. */
  flags: number;
  /** The kernel's dm interface version. */
  kernelVersion: DmVersion;
}

/** What wait() takes: the status flags, an AbortSignal, the pre-4.13 fallback interval. */
export interface WaitOptions extends StatusOptions, EventWaitOptions {}

/** A device's info and status lines, read in one DM_TABLE_STATUS (so the event counter goes with the status). */
export interface DmStatusWithInfo {
  /** The device's info (event counter, open count, suspended...). */
  info: DmDeviceInfo;
  /** Its status lines, one per target. */
  targets: DmTarget[];
}

/** Options of status, table and wait requests. */
export interface StatusOptions {
  /** Report on the inactive (loaded, not yet resumed) table. */
  inactive?: boolean;
  /** Do not flush/commit first (thin-pool: no metadata commit). */
  noflush?: boolean;
}

let layoutChecked = false;

function nativeTransport(controlPath?: string, maxBufferSize?: number): DmTransport {
  return (command, request) => {
    const addon = native();
    if (!layoutChecked) {
      assertNativeLayout(addon.dmConstants);
      layoutChecked = true;
    }
    return addon.dmIoctl(command, request, { controlPath, maxBufferSize });
  };
}

function nativePoller(controlPath: string): DmEventPoller {
  const p = new (native().DmPoll)();
  p.open(controlPath);
  return p;
}

function nativeSyncTransport(controlPath?: string, maxBufferSize?: number): DmSyncTransport {
  return (command, request) => native().dmIoctlSync(command, request, { controlPath, maxBufferSize });
}

interface CallContext {
  id?: DeviceId;
  device?: string;
  targetMessage?: string;
}

/** Device-mapper control: one async method per dm ioctl, each run off the JS thread. */
export class DeviceMapper {
  /** Where device nodes are made (default /dev/mapper). */
  readonly devDir: string;
  private readonly transport: DmTransport;
  private readonly syncTransport?: DmSyncTransport;
  private readonly openPoller: () => DmEventPoller;
  private readonly nodes: 'auto' | 'always' | 'never';
  private readonly nodeMode: number;
  /** Nodes this instance made: name -> dev. */
  private readonly madeNodes = new Map<string, DevNum>();

  constructor(opts: DeviceMapperOptions = {}) {
    this.transport = opts.transport ?? nativeTransport(opts.controlPath, opts.maxBufferSize);
    this.syncTransport = opts.syncTransport ?? (opts.transport ? undefined : nativeSyncTransport(opts.controlPath, opts.maxBufferSize));
    const controlPath = opts.controlPath ?? '/dev/mapper/control';
    this.openPoller = opts.eventPoller ?? (() => nativePoller(controlPath));
    this.nodes = opts.nodes ?? 'auto';
    this.devDir = opts.devDir ?? '/dev/mapper';
    this.nodeMode = opts.nodeMode ?? 0o600;
  }

  // ---------------------------------------------------------------- global

  /** The kernel's dm interface version. */
  async version(): Promise<DmVersion> {
    return (await this.call(Cmd.VERSION, {})).header.version;
  }

  /** DM_REMOVE_ALL: removes every device that is not open. */
  async removeAll(opts: { deferred?: boolean } = {}): Promise<void> {
    await this.call(Cmd.REMOVE_ALL, { flags: opts.deferred ? Flag.DEFERRED_REMOVE : 0, version: opts.deferred ? [4, 27, 0] : undefined });
  }

  /** All dm devices. `uuid: true` asks for uuids too (kernel 4.45+). */
  async listDevices(opts: { uuid?: boolean } = {}): Promise<DmListEntry[]> {
    const r = await this.call(Cmd.LIST_DEVICES, { flags: opts.uuid ? Flag.UUID : 0 });
    return decodeNameList(resultArea(r.buf, r.header), r.header.version, !!opts.uuid);
  }

  /** Loaded target types and their versions. */
  async listVersions(): Promise<TargetVersion[]> {
    const r = await this.call(Cmd.LIST_VERSIONS, {});
    return decodeTargetVersions(resultArea(r.buf, r.header));
  }

  /** One target type's version (interface 4.41+; the kernel loads the module). */
  async targetVersion(type: string): Promise<TargetVersion> {
    const r = await this.call(Cmd.GET_TARGET_VERSION, { name: checkTargetType(type) }, undefined, { device: type });
    const v = decodeTargetVersions(resultArea(r.buf, r.header));
    if (v.length !== 1) throw new DmthinError('EPROTO', `DM_GET_TARGET_VERSION returned ${v.length} records`);
    return v[0];
  }

  // ---------------------------------------------------------------- device

  /**
   * DM_DEV_CREATE: a device with no table. `minor` asks for a fixed minor.
   * Makes /dev/mapper/<name> per the `nodes` option; if that fails the
   * device is removed again and the error thrown.
   */
  async create(name: string, opts: { uuid?: string; minor?: number } = {}): Promise<DmDeviceInfo> {
    checkNewName(name);
    const f: RequestFields = { version: MIN_VERSION[Cmd.DEV_CREATE], name };
    if (opts.uuid !== undefined) f.uuid = checkUuid(opts.uuid);
    if (opts.minor !== undefined) {
      f.flags = Flag.PERSISTENT_DEV;
      f.dev = encodeDev({ major: 0, minor: opts.minor });
    }
    const info = toInfo((await this.call(Cmd.DEV_CREATE, f, undefined, { device: name })).header);
    if (this.manageNodes()) {
      try {
        await this.ensureNode(info.name, info.dev);
      } catch (err) {
        await this.call(Cmd.DEV_REMOVE, { name }).catch(() => undefined);
        throw err;
      }
    }
    return info;
  }

  /**
   * What `dmsetup create` does: DEV_CREATE, TABLE_LOAD, resume. If the load
   * or the resume fails the new device is removed again and the error thrown.
   */
  async createWithTable(
    name: string,
    targets: readonly DmTarget[],
    opts: { uuid?: string; minor?: number; readOnly?: boolean } = {},
  ): Promise<DmDeviceInfo> {
    encodeTargetSpecs(targets); // refuse a bad table before creating anything
    await this.create(name, { uuid: opts.uuid, minor: opts.minor });
    try {
      await this.loadTable(name, targets, { readOnly: opts.readOnly });
      return await this.resume(name);
    } catch (err) {
      await this.remove(name).catch(() => undefined);
      throw err;
    }
  }

  /**
   * DM_DEV_REMOVE. With `deferred`, an open device is removed on last close
   * and `deferred: true` comes back. Removes the /dev/mapper node when it is
   * one we manage (a block node for this device).
   */
  async remove(ref: DeviceRef, opts: { deferred?: boolean } = {}): Promise<{
    /** The removal waits for the last close. */
    deferred: boolean;
  }> {
    const id = resolveDeviceRef(ref);
    let node: { name: string; dev: DevNum } | undefined;
    const made = id.name !== undefined ? this.madeNodes.get(id.name) : undefined;
    if (made) node = { name: id.name!, dev: made };
    else if (this.manageNodes()) {
      const i = await this.info(id).catch(() => undefined);
      if (i) node = { name: i.name, dev: i.dev };
    }
    const f: RequestFields = { version: MIN_VERSION[Cmd.DEV_REMOVE], ...idFields(id) };
    if (opts.deferred) {
      f.flags = Flag.DEFERRED_REMOVE;
      f.version = [4, 27, 0];
    }
    const h = (await this.call(Cmd.DEV_REMOVE, f, undefined, { id })).header;
    const deferred = !!(opts.deferred && h.flags & Flag.DEFERRED_REMOVE);
    if (!deferred && node) {
      native().unlinkNode(join(this.devDir, node.name), node.dev.major, node.dev.minor);
      this.madeNodes.delete(node.name);
    }
    return { deferred };
  }

  /** DM_DEV_RENAME to a new name, or set the uuid of a device that has none. */
  async rename(ref: DeviceRef, to: { name: string; uuid?: never } | { uuid: string; name?: never }): Promise<DmDeviceInfo> {
    const id = resolveDeviceRef(ref);
    const newName = to.name !== undefined ? checkNewName(to.name) : undefined;
    const f: RequestFields = { version: MIN_VERSION[Cmd.DEV_RENAME], ...idFields(id) };
    let payload: Buffer;
    if (newName !== undefined) payload = encodeCString(newName);
    else {
      payload = encodeCString(checkUuid(to.uuid));
      f.flags = Flag.UUID;
      f.version = [4, 19, 0]; // rename-to-uuid (DM_UUID_FLAG)
    }
    const info = toInfo((await this.call(Cmd.DEV_RENAME, f, payload, { id })).header);
    const made = id.name !== undefined ? this.madeNodes.get(id.name) : undefined;
    if (made && newName !== undefined && id.name !== undefined) {
      await rename(join(this.devDir, id.name), join(this.devDir, newName)).catch(() => undefined);
      this.madeNodes.delete(id.name);
      this.madeNodes.set(newName, made);
    }
    return info;
  }

  /** DM_DEV_SUSPEND with DM_SUSPEND_FLAG. */
  async suspend(ref: DeviceRef, opts: { noflush?: boolean; skipLockfs?: boolean } = {}): Promise<DmDeviceInfo> {
    const id = resolveDeviceRef(ref);
    const flags = Flag.SUSPEND | (opts.noflush ? Flag.NOFLUSH : 0) | (opts.skipLockfs ? Flag.SKIP_LOCKFS : 0);
    return toInfo((await this.call(Cmd.DEV_SUSPEND, { ...idFields(id), flags }, undefined, { id })).header);
  }

  /**
   * DM_DEV_SUSPEND without DM_SUSPEND_FLAG: swaps in the inactive table, if
   * any, and resumes. noflush/skipLockfs apply to the implicit suspend the
   * kernel does when it swaps tables on a live device.
   */
  async resume(ref: DeviceRef, opts: { noflush?: boolean; skipLockfs?: boolean } = {}): Promise<DmDeviceInfo> {
    const id = resolveDeviceRef(ref);
    const flags = (opts.noflush ? Flag.NOFLUSH : 0) | (opts.skipLockfs ? Flag.SKIP_LOCKFS : 0);
    const info = toInfo((await this.call(Cmd.DEV_SUSPEND, { ...idFields(id), flags }, undefined, { id })).header);
    if (this.manageNodes()) await this.ensureNode(info.name, info.dev);
    return info;
  }

  /** DM_DEV_STATUS. */
  async info(ref: DeviceRef, opts: { inactive?: boolean } = {}): Promise<DmDeviceInfo> {
    const id = resolveDeviceRef(ref);
    const flags = opts.inactive ? Flag.QUERY_INACTIVE_TABLE : 0;
    return toInfo((await this.call(Cmd.DEV_STATUS, { ...idFields(id), flags }, undefined, { id })).header);
  }

  /**
   * Waits until the device's event counter differs from `eventNr` (a dm
   * event: a thin-pool's low-water mark, a mode change, a table swap...),
   * then returns its info and status lines (DM_TABLE_STATUS; `info.eventNr`
   * is the counter that status goes with). Returns at once if the counter
   * already differs. Cancellable with `signal` (AbortError, code ABORT_ERR),
   * and holds no worker thread: see event-wait.ts for why this is not
   * DM_DEV_WAIT. Rejects with ENXIO (DM_DEV_STATUS) if the device is removed.
   */
  async wait(ref: DeviceRef, eventNr: number, opts: WaitOptions = {}): Promise<DmStatusWithInfo> {
    const id = resolveDeviceRef(ref);
    if (!Number.isInteger(eventNr) || eventNr < 0 || eventNr > 0xffffffff) throw new UsageError('eventNr must be a u32');
    const openPoller = () => {
      try {
        return this.openPoller();
      } catch (err) {
        throw toIoctlError(err, Cmd.DEV_ARM_POLL, deviceLabel(id));
      }
    };
    const armed = (p: DmEventPoller): DmEventPoller => ({
      arm: () => {
        try {
          p.arm();
        } catch (err) {
          throw toIoctlError(err, Cmd.DEV_ARM_POLL, deviceLabel(id));
        }
      },
      readable: () => p.readable(),
      close: () => p.close(),
    });
    await waitForEventChange(() => armed(openPoller()), async () => (await this.info(id)).eventNr, eventNr, opts);
    return this.statusWithInfo(id, opts);
  }

  // ---------------------------------------------------------------- table

  /** DM_TABLE_LOAD into the inactive slot; resume() activates it. */
  async loadTable(ref: DeviceRef, targets: readonly DmTarget[], opts: { readOnly?: boolean } = {}): Promise<DmDeviceInfo> {
    const id = resolveDeviceRef(ref);
    const payload = encodeTargetSpecs(targets);
    const f: RequestFields = { ...idFields(id), targetCount: targets.length, flags: opts.readOnly ? Flag.READONLY : 0, version: MIN_VERSION[Cmd.TABLE_LOAD] };
    return toInfo((await this.call(Cmd.TABLE_LOAD, f, payload, { id })).header);
  }

  /** DM_TABLE_CLEAR: drops the inactive table. */
  async clearTable(ref: DeviceRef): Promise<DmDeviceInfo> {
    const id = resolveDeviceRef(ref);
    return toInfo((await this.call(Cmd.TABLE_CLEAR, { ...idFields(id) }, undefined, { id })).header);
  }

  /** DM_TABLE_DEPS: devices the table uses. */
  async deps(ref: DeviceRef, opts: { inactive?: boolean } = {}): Promise<DevNum[]> {
    const id = resolveDeviceRef(ref);
    const r = await this.call(Cmd.TABLE_DEPS, { ...idFields(id), flags: opts.inactive ? Flag.QUERY_INACTIVE_TABLE : 0 }, undefined, { id });
    return decodeDeps(resultArea(r.buf, r.header));
  }

  /** DM_TABLE_STATUS (INFO): each target's status line in `params`. */
  async status(ref: DeviceRef, opts: StatusOptions = {}): Promise<DmTarget[]> {
    const id = resolveDeviceRef(ref);
    const r = await this.call(Cmd.TABLE_STATUS, { ...idFields(id), flags: statusFlags(opts) }, undefined, { id });
    return decodeTargetSpecs(resultArea(r.buf, r.header), r.header.targetCount);
  }

  /** DM_TABLE_STATUS, with the device's info from the same call (its event counter goes with these lines). */
  async statusWithInfo(ref: DeviceRef, opts: StatusOptions = {}): Promise<DmStatusWithInfo> {
    const id = resolveDeviceRef(ref);
    const r = await this.call(Cmd.TABLE_STATUS, { ...idFields(id), flags: statusFlags(opts) }, undefined, { id });
    return { info: toInfo(r.header), targets: decodeTargetSpecs(resultArea(r.buf, r.header), r.header.targetCount) };
  }

  /** DM_TABLE_STATUS with DM_STATUS_TABLE_FLAG: the table as the kernel prints it. */
  async table(ref: DeviceRef, opts: { inactive?: boolean } = {}): Promise<DmTarget[]> {
    const id = resolveDeviceRef(ref);
    const flags = Flag.STATUS_TABLE | (opts.inactive ? Flag.QUERY_INACTIVE_TABLE : 0);
    const r = await this.call(Cmd.TABLE_STATUS, { ...idFields(id), flags }, undefined, { id });
    return decodeTargetSpecs(resultArea(r.buf, r.header), r.header.targetCount);
  }

  /**
   * DM_TARGET_MSG to the target at `sector`. Resolves with the target's
   * output text only when the kernel set DM_DATA_OUT_FLAG (thin-pool
   * messages never do). A message whose output overflowed 16 KiB is sent
   * again with a bigger buffer, as libdevmapper does.
   */
  async targetMessage(ref: DeviceRef, sector: Sectors, message: string): Promise<string | undefined> {
    const id = resolveDeviceRef(ref);
    const payload = encodeTargetMsg(sector, message);
    const r = await this.call(Cmd.TARGET_MSG, { ...idFields(id) }, payload, { id, targetMessage: message });
    if (!(r.header.flags & Flag.DATA_OUT)) return undefined;
    return decodeMessageOutput(resultArea(r.buf, r.header));
  }

  /**
   * DM_TARGET_MSG on the calling thread. Only for exit handlers, where the
   * event loop will run no more async work (e.g. releasing a metadata
   * snapshot from process.on('exit')). Output text is not returned.
   */
  targetMessageSync(ref: DeviceRef, sector: Sectors, message: string): void {
    if (!this.syncTransport) throw new DmthinError('ENOTSUP', 'no synchronous transport configured');
    const id = resolveDeviceRef(ref);
    const req = encodeRequest({ ...idFields(id), version: MIN_VERSION[Cmd.TARGET_MSG] }, encodeTargetMsg(sector, message));
    try {
      this.syncTransport(Cmd.TARGET_MSG, req);
    } catch (err) {
      throw toIoctlError(err, Cmd.TARGET_MSG, deviceLabel(id), message);
    }
  }

  /** DM_DEV_SET_GEOMETRY (what HDIO_GETGEO reports). */
  async setGeometry(ref: DeviceRef, g: { cylinders: number; heads: number; sectors: number; start: Sectors }): Promise<void> {
    const id = resolveDeviceRef(ref);
    for (const [k, v] of Object.entries(g))
      if (!Number.isSafeInteger(v) || v < 0) throw new UsageError(`geometry ${k} must be a non-negative integer`);
    const payload = encodeCString(`${g.cylinders} ${g.heads} ${g.sectors} ${g.start}`);
    await this.call(Cmd.DEV_SET_GEOMETRY, { ...idFields(id) }, payload, { id });
  }

  // ---------------------------------------------------------------- internals

  private async call(
    cmd: Cmd,
    fields: Omit<RequestFields, 'version'> & { version?: DmVersion },
    payload?: Buffer,
    ctx: CallContext = {},
  ): Promise<{ header: IoctlHeader; buf: Buffer }> {
    const req = encodeRequest({ ...fields, version: fields.version ?? MIN_VERSION[cmd] }, payload);
    const device = ctx.device ?? deviceLabel(ctx.id);
    let buf: Buffer;
    try {
      buf = await this.transport(cmd, req);
    } catch (err) {
      throw toIoctlError(err, cmd, device, ctx.targetMessage);
    }
    const header = decodeHeader(buf);
    if (RETURNS_DATA.has(cmd) && header.flags & Flag.BUFFER_FULL)
      throw new DmIoctlError('ENOBUFS', `${CMD_NAMES[cmd]}${device ? ` '${device}'` : ''}: result truncated (DM_BUFFER_FULL_FLAG)`, {
        ioctl: CMD_NAMES[cmd],
        device,
        targetMessage: ctx.targetMessage,
      });
    return { header, buf };
  }

  private manageNodes(): boolean {
    if (this.nodes === 'never') return false;
    if (this.nodes === 'always') return true;
    // udevd's control socket: the same test libudev uses for "udev is running".
    return !existsSync('/run/udev/control');
  }

  /** /dev/mapper/<name> as a block node for `dev`; stale block nodes are replaced, anything else (a udev symlink) is left alone. */
  private async ensureNode(name: string, dev: DevNum): Promise<void> {
    if (name.includes('/') || name === '.' || name === '..') return;
    const path = join(this.devDir, name);
    await mkdir(this.devDir, { recursive: true, mode: 0o755 });
    const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (st) {
      if (!st.isBlockDevice()) return;
      if (st.rdev === Number(encodeDev(dev))) {
        this.madeNodes.set(name, dev);
        return;
      }
      await unlink(path);
    }
    try {
      native().mknodBlock(path, dev.major, dev.minor, this.nodeMode);
    } catch (err) {
      throw toNodeError(err, name);
    }
    this.madeNodes.set(name, dev);
  }
}

function statusFlags(o: StatusOptions): number {
  return (o.inactive ? Flag.QUERY_INACTIVE_TABLE : 0) | (o.noflush ? Flag.NOFLUSH : 0);
}

export function toInfo(h: IoctlHeader): DmDeviceInfo {
  const i: DmDeviceInfo = {
    name: h.name,
    dev: h.dev,
    openCount: h.openCount,
    eventNr: h.eventNr,
    targetCount: h.targetCount,
    readOnly: !!(h.flags & Flag.READONLY),
    suspended: !!(h.flags & Flag.SUSPEND),
    activeTable: !!(h.flags & Flag.ACTIVE_PRESENT),
    inactiveTable: !!(h.flags & Flag.INACTIVE_PRESENT),
    deferredRemove: !!(h.flags & Flag.DEFERRED_REMOVE),
    internalSuspend: !!(h.flags & Flag.INTERNAL_SUSPEND),
    flags: h.flags,
    kernelVersion: h.version,
  };
  if (h.uuid) i.uuid = h.uuid;
  return i;
}

/** The part of a Node-style message after "CODE: " and before ", syscall". */
function reasonOf(message: string | undefined, code: string): string | undefined {
  if (!message) return undefined;
  const m = new RegExp(`^${code}: ([^,]*)`).exec(message);
  return m ? m[1] : undefined;
}

export function toIoctlError(err: unknown, cmd: Cmd, device?: string, targetMessage?: string): Error {
  if (err instanceof DmIoctlError) return err;
  const e = err as { message?: string; code?: unknown; errno?: unknown; syscall?: string; path?: string; device?: string };
  if (!e || typeof e.code !== 'string' || typeof e.errno !== 'number') return err as Error; // a programming error, not the kernel's
  const ioctl = CMD_NAMES[cmd];
  const dev = device ?? e.device;
  // The control node did not open: no ioctl reached the kernel, so the
  // error must not read like the kernel's answer about `dev`.
  if (e.syscall === 'open') {
    const control = e.path ?? '/dev/mapper/control';
    const fields = { errno: e.errno, syscall: 'open', path: control, device: dev, targetMessage, cause: err };
    if (e.code === 'ENOENT') return noDeviceMapper(e.code, `${control} does not exist`, fields);
    if (e.code === 'ENODEV' || e.code === 'ENXIO') return noDeviceMapper(e.code, `${control} exists but the kernel has no device-mapper driver`, fields);
    if (isPermissionCode(e.code)) return needsRootError(e.code, `cannot open ${control}`, fields);
  }
  // The capability check of every dm ioctl answers EACCES.
  if (e.code === 'EACCES' && (e.syscall ?? 'ioctl') === 'ioctl')
    return needsRootError(e.code, `the kernel refused ${ioctl}${dev ? ` '${dev}'` : ''}`, { errno: e.errno, syscall: 'ioctl', ioctl, device: dev, targetMessage, cause: err });
  const reason = reasonOf(e.message, e.code);
  const where = e.syscall && e.syscall !== 'ioctl' ? ` (${e.syscall}${e.path ? ` ${e.path}` : ''})` : '';
  const text = `${ioctl}${dev ? ` '${dev}'` : ''}${targetMessage !== undefined ? ` ${JSON.stringify(targetMessage)}` : ''} failed: ${e.code}${reason ? ` (${reason})` : ''}${where}`;
  return new DmIoctlError(e.code, text, {
    errno: e.errno,
    syscall: e.syscall ?? 'ioctl',
    ...(e.path !== undefined ? { path: e.path } : {}),
    ioctl,
    device: dev,
    targetMessage,
    cause: err,
  });
}

function noDeviceMapper(code: string, why: string, fields: ErrorFields & { path: string }): SetupError {
  const load = "load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too)";
  const fix = code === 'ENOENT' ? `${load}, then check that ${fields.path} exists ('dmsetup mknodes' creates it)` : load;
  return new SetupError('no-device-mapper', code, `device-mapper is not available: ${why}; ${fix}`, fields);
}

function toNodeError(err: unknown, name: string): Error {
  const e = err as { code?: unknown; errno?: unknown; message?: string; syscall?: string; path?: string };
  if (!e || typeof e.code !== 'string') return err as Error;
  return new SystemCallError(e.code, `cannot make the node for dm device '${name}': ${e.message}`, {
    errno: typeof e.errno === 'number' ? e.errno : undefined,
    syscall: e.syscall,
    path: e.path,
    device: name,
    cause: err,
  });
}
