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
  if (!isPermissionCode(err.code) || !isBlockDevice(path)) {
    // The addon's "ENOENT: No such file or directory, stat '/x'" as a sentence: "cannot open /x for reading: no such file or directory".
    const m = /^[A-Z0-9_]+: ([^,]*), \w+ '.*?'(?: \((.*)\))?$/.exec(err.message);
    if (m && err.path === path) err.message = `cannot open ${path} for ${access}: ${m[2] ?? m[1].charAt(0).toLowerCase() + m[1].slice(1)}`;
    return err;
  }
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
