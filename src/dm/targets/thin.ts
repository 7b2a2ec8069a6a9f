/**
 * The thin target: table line builder and parser, status parser.
 */
import { check, UsageError } from '../../errors';
import { type Sectors, sectors } from '../../units';
import type { DmTarget } from '../ioctl';
import { type DeviceArg, decimalArg, deviceArg, parseFail, parseSafe, tokens } from './args';
import { MAX_THIN_ID, type ThinId } from './thin-pool';

/** The thin target type name. */
export const THIN_TARGET = 'thin';

/** What a thin table line is built from. */
export interface ThinTableArgs {
  /** The pool device (not suspended when the table is loaded). */
  poolDev: DeviceArg;
  /** Must already exist in the pool ("Couldn't open thin internal device" otherwise). */
  devId: ThinId;
  /** Read-only origin for unprovisioned blocks. */
  externalOriginDev?: DeviceArg;
}

/** A parsed thin table line. */
export interface ThinTable {
  /** The pool device, as given or `major:minor`. */
  poolDev: string;
  /** The thin device id. */
  devId: number;
  /** The external origin device, if any. */
  externalOriginDev?: string;
}

/** `<pool_dev> <dev_id> [<external_origin_dev>]` */
export function thinParams(a: ThinTableArgs): string {
  check.required(a, 'thinTarget');
  const pool = deviceArg(a.poolDev, 'pool device');
  const parts = [pool, decimalArg(a.devId, 'thin id', BigInt(MAX_THIN_ID))];
  if (a.externalOriginDev !== undefined) {
    const origin = deviceArg(a.externalOriginDev, 'external origin device');
    if (origin === pool) throw new UsageError('the external origin cannot be the pool itself');
    parts.push(origin);
  }
  return parts.join(' ');
}

/** A thin target covering `length` sectors from `start`. */
export function thinTarget(length: Sectors, a: ThinTableArgs, start: Sectors = sectors(0)): DmTarget {
  check.integer(length, 'length'); // the kernel refuses a target of no sectors
  check.integer(start, 'start', 0);
  return { start, length, type: THIN_TARGET, params: thinParams(a) };
}

/** A table line we built, or the kernel's table status `maj:min id [maj:min]`. */
export function parseThinTable(params: string): ThinTable {
  const t = tokens(params);
  if (t.length < 2 || t.length > 3) throw parseFail('thin table has 2 or 3 fields', params);
  const devId = parseSafe(t[1], 'thin id', params);
  if (devId > MAX_THIN_ID) throw parseFail(`thin id ${devId} exceeds 2^24-1`, params);
  const out: ThinTable = { poolDev: t[0], devId };
  if (t.length === 3) out.externalOriginDev = t[2];
  return out;
}

/**
 * INFO status: `<nr_mapped_sectors> <highest_mapped_sector|->`, or `Fail`
 * (pool failed), `Error` (a metadata query failed). A lone `-` means the
 * target has no thin device attached.
 */
export type ThinStatus =
  | {
      /** The device works. */
      kind: 'working';
      /** Sectors mapped. */
      mappedSectors: Sectors;
      /** The highest mapped sector, or null when none is mapped. */
      highestMappedSector: Sectors | null;
    }
  | {
      /** The pool failed (`Fail`). */
      kind: 'fail';
    }
  | {
      /** A metadata query failed (`Error`). */
      kind: 'error';
    }
  | {
      /** No thin device is attached (`-`). */
      kind: 'unavailable';
    };

/** Parses a thin target's INFO status line. */
export function parseThinStatus(line: string): ThinStatus {
  const t = tokens(line);
  if (t.length === 1) {
    if (t[0] === 'Fail') return { kind: 'fail' };
    if (t[0] === 'Error') return { kind: 'error' };
    if (t[0] === '-') return { kind: 'unavailable' };
  }
  if (t.length !== 2) throw parseFail('thin status has 2 fields', line);
  return {
    kind: 'working',
    mappedSectors: sectors(parseSafe(t[0], 'mapped sectors', line)),
    highestMappedSector: t[1] === '-' ? null : sectors(parseSafe(t[1], 'highest mapped sector', line)),
  };
}
