/**
 * Block device numbers and paths: a table line names devices as major:minor;
 * the reader needs a path. sysfs maps one to the other without udev.
 */
import { readFile, stat } from 'node:fs/promises';
import { DmthinError, UsageError } from '../errors';
import { devNumOfRdev } from '../units';
import { checkDev, type DevNum } from './ioctl';

/** major:minor of a block device path, or of a 'major:minor' string. */
export async function devNumOf(dev: string | DevNum): Promise<DevNum> {
  if (typeof dev === 'object') return dev;
  const m = /^(\d+):(\d+)$/.exec(dev);
  if (m) return { major: Number(m[1]), minor: Number(m[2]) };
  let st;
  try {
    st = await stat(dev, { bigint: true });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new DmthinError(err.code ?? 'ENOENT', `${dev}: ${err.message}`, { path: dev, syscall: 'stat', cause: e });
  }
  if (!st.isBlockDevice()) throw new UsageError(`${dev} is not a block device`, { path: dev });
  return devNumOfRdev(st.rdev);
}

/** /dev/<name> of a block device number, from /sys/dev/block/M:m/uevent. */
export async function devPathOf(d: DevNum): Promise<string> {
  checkDev(d);
  const uevent = `/sys/dev/block/${d.major}:${d.minor}/uevent`;
  let text: string;
  try {
    text = await readFile(uevent, 'utf8');
  } catch (e) {
    throw new DmthinError('ENODEV', `no block device ${d.major}:${d.minor} (${uevent} unreadable)`, { path: uevent, cause: e });
  }
  const m = /^DEVNAME=(.+)$/m.exec(text);
  if (!m) throw new DmthinError('ENODEV', `${uevent} names no device`, { path: uevent });
  return `/dev/${m[1]}`;
}

/** Size in 512-byte sectors of a block device (from sysfs). */
export async function sizeInSectors(d: DevNum): Promise<number> {
  const p = `/sys/dev/block/${d.major}:${d.minor}/size`;
  try {
    return Number((await readFile(p, 'utf8')).trim());
  } catch (e) {
    throw new DmthinError('ENODEV', `cannot read the size of ${d.major}:${d.minor} (${p})`, { path: p, cause: e });
  }
}

/**
 * Whether a block device is read-only (sysfs `ro`: `blockdev --setro`, a
 * read-only loop device, a write-protected disk). Its writes fail with
 * EPERM even though an O_RDWR open succeeds. False when sysfs cannot say.
 */
export async function isReadOnly(d: DevNum): Promise<boolean> {
  try {
    return (await readFile(`/sys/dev/block/${d.major}:${d.minor}/ro`, 'utf8')).trim() === '1';
  } catch {
    return false;
  }
}

/** True when `path` is a block device node of a device-mapper device (its sysfs entry has a dm/ folder). */
export async function isDmDevice(path: string): Promise<boolean> {
  try {
    const st = await stat(path);
    if (!st.isBlockDevice()) return false;
    const d = await devNumOf(path);
    await stat(`/sys/dev/block/${d.major}:${d.minor}/dm`);
    return true;
  } catch {
    return false;
  }
}
