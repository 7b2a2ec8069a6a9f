/**
 * The error of a failed open in the native reader or writer. A block device
 * refused for lack of privilege says "needs root" first: the bare EACCES of a
 * device node reads like a broken path to someone new to block devices.
 * Regular files keep the plain error, where EACCES is about file modes.
 */
import { statSync } from 'node:fs';
import { type DmthinError, fromNative, isPermissionCode, needsRootError } from '../errors';

export function openError(e: unknown, path: string, access: 'reading' | 'writing'): DmthinError {
  const err = fromNative(e, { path });
  if (!isPermissionCode(err.code) || !isBlockDevice(path)) return err;
  return needsRootError(
    err.code,
    `cannot open block device ${path} for ${access}`,
    { errno: err.errno, syscall: err.syscall, path, cause: e },
    'run as root (e.g. with sudo), or give this user access to the device',
  );
}

function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}
