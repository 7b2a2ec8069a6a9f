/**
 * Shared pieces of target table lines, status lines and messages: tokens,
 * strict decimal integers and device arguments. The kernel splits all of
 * these on whitespace, so anything we put in one field must be a single
 * token that cannot be read as two.
 */
import { DmParseError, UsageError } from '../../errors';
import { type DevNum, checkDev, formatDev } from '../ioctl';

/** A device argument of a table line: 'major:minor', a /dev path, or a DevNum. */
export type DeviceArg = string | DevNum;

export const U64_MAX = (1n << 64n) - 1n;

/** Kernel output split into tokens: it pads with spaces (trailing ones too). */
export function tokens(line: string): string[] {
  if (typeof line !== 'string') throw new UsageError(`the line to parse must be a string, got ${line === null ? 'null' : typeof line}`);
  const t = line.trim();
  return t === '' ? [] : t.split(/\s+/);
}

/** 'major:minor' or a path, as one whitespace-free token. */
export function deviceArg(d: DeviceArg, what: string): string {
  if (typeof d === 'object' && d !== null) {
    checkDev(d);
    return formatDev(d);
  }
  if (typeof d !== 'string' || d.length === 0) throw new UsageError(`${what} must be 'major:minor', a device path or { major, minor }`);
  if (/[\s\0\\]/.test(d)) throw new UsageError(`${what} must not contain whitespace, NUL or backslash: ${JSON.stringify(d)}`);
  return d;
}

const DECIMAL = /^[0-9]+$/;

/**
 * A caller's integer argument (number, bigint or a string of ASCII digits)
 * in 0..max, as canonical decimal. Signs, spaces, hex, exponents, fractions,
 * a trailing newline (which the kernel's kstrtoull would accept) are refused.
 */
export function decimalArg(v: unknown, what: string, max: bigint): string {
  let n: bigint;
  if (typeof v === 'bigint') n = v;
  else if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new UsageError(`${what} must be an integer (got ${v})`);
    n = BigInt(v);
  } else if (typeof v === 'string') {
    if (!DECIMAL.test(v) || v.length > 40) throw new UsageError(`${what} must be a plain decimal integer (got ${JSON.stringify(v)})`);
    n = BigInt(v);
  } else {
    throw new UsageError(`${what} must be an integer`);
  }
  if (n < 0n || n > max) throw new UsageError(`${what} must be between 0 and ${max} (got ${n})`);
  return n.toString(10);
}

/** Strict u64 from kernel output. */
export function parseU64(tok: string | undefined, what: string, line: string): bigint {
  if (tok === undefined || !DECIMAL.test(tok)) throw new DmParseError(`bad ${what} ${JSON.stringify(tok)} in ${JSON.stringify(line)}`, { input: line });
  const n = BigInt(tok);
  if (n > U64_MAX) throw new DmParseError(`${what} ${tok} exceeds u64 in ${JSON.stringify(line)}`, { input: line });
  return n;
}

/** Strict unsigned integer from kernel output that must fit a JS number. */
export function parseSafe(tok: string | undefined, what: string, line: string): number {
  const n = parseU64(tok, what, line);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new DmParseError(`${what} ${tok} exceeds 2^53 in ${JSON.stringify(line)}`, { input: line });
  return Number(n);
}

export function parseFail(msg: string, line: string): DmParseError {
  return new DmParseError(`${msg} in ${JSON.stringify(line)}`, { input: line });
}
