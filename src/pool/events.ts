/**
 * Pool events: what changed in a thin-pool between two dm events, derived
 * from its status lines (the kernel says only "something happened": the
 * event counter moves; the status says what).
 *
 * Each dm event of the pool yields one or more of:
 * - `low-water-mark`: free data blocks fell to or below the table's
 *   low_water_mark (they were above it at the previous status). The kernel
 *   raises this event once per crossing; a pool user grows the data device.
 * - `mode`: the pool's mode changed: `rw`, `out_of_data_space` (writes queue
 *   or fail, per the no-space policy), `ro` (read-only table, or out of
 *   metadata space), `fail`, `error`. Running out of data space is the
 *   `mode` event whose `to` is `out_of_data_space`.
 * - `needs-check`: the metadata was flagged for thin_check.
 * - `metadata-low`: free metadata blocks fell to or below the kernel's
 *   metadata low watermark (the status's last field, Linux 4.19+).
 * - `other`: the counter moved but the status shows none of the above (the
 *   change was undone before the status was read, or the kernel raised an
 *   event this code does not type).
 *
 * A plain table reload or resume is not an event of the pool (only of dm as
 * a whole); what it changes shows at the pool's next event.
 */
import type { PoolMode, ThinPoolStatus } from '../dm/targets/thin-pool';
import { type DataBlocks, type MetaBlocks, dataBlocks, metaBlocks } from '../units';
import { check } from '../errors';

/** A pool's mode as events report it: the status's mode, or `fail` / `error` for those status lines. */
export type PoolState = PoolMode | 'fail' | 'error';

interface PoolEventBase {
  /** The pool's event counter that `status` goes with (DM_TABLE_STATUS). */
  eventNr: number;
  /** The status after the event. */
  status: ThinPoolStatus;
  /** The status at the previous event (or when iteration began). */
  previous: ThinPoolStatus;
}

/** Free data blocks fell to the table's low-water mark or below (time to grow the data device). */
export interface LowWaterMarkEvent extends PoolEventBase {
  /** Discriminant. */
  type: 'low-water-mark';
  /** Free data blocks after the event. */
  freeDataBlocks: DataBlocks;
  /** The pool table's low-water mark, in data blocks. */
  lowWaterMark: DataBlocks;
}

/** The pool's mode changed (e.g. rw to out_of_data_space, or to ro / fail). */
export interface ModeEvent extends PoolEventBase {
  /** Discriminant. */
  type: 'mode';
  /** The mode before. */
  from: PoolState;
  /** The mode now. */
  to: PoolState;
}

/** The pool set its needs_check flag: its metadata must be checked (thin_check) before it is used read-write again. */
export interface NeedsCheckEvent extends PoolEventBase {
  /** Discriminant. */
  type: 'needs-check';
}

/** Free metadata blocks fell to the kernel's metadata low watermark or below. */
export interface MetadataLowEvent extends PoolEventBase {
  /** Discriminant. */
  type: 'metadata-low';
  /** Free metadata blocks after the event. */
  freeMetadataBlocks: MetaBlocks;
  /** The kernel's metadata low watermark, in metadata blocks. */
  metadataLowWatermark: MetaBlocks;
}

/** A dm event none of the other types describes (a table swap, a resize...). */
export interface OtherPoolEvent extends PoolEventBase {
  /** Discriminant. */
  type: 'other';
}

/** One change a dm event of the pool brought (see the module comment for each type). */
export type PoolEvent = LowWaterMarkEvent | ModeEvent | NeedsCheckEvent | MetadataLowEvent | OtherPoolEvent;
/** The `type` of a PoolEvent. */
export type PoolEventType = PoolEvent['type'];

/** `rw` when a working status has no mode field (kernels before 3.11). */
export function poolState(s: ThinPoolStatus): PoolState {
  check.object(s, 'status', 'a ThinPoolStatus (from parseThinPoolStatus or ThinPool.status())');
  return s.kind === 'working' ? (s.mode ?? 'rw') : s.kind;
}

/**
 * The events between two statuses of one pool. `lowWaterMark` is the table's
 * (in data blocks) at the time of `status`. Never empty: `other` when
 * nothing recognised changed. Order: mode, low-water-mark, metadata-low,
 * needs-check.
 */
export function derivePoolEvents(previous: ThinPoolStatus, status: ThinPoolStatus, lowWaterMark: DataBlocks, eventNr: number): PoolEvent[] {
  const base = { eventNr, status, previous };
  const out: PoolEvent[] = [];
  const from = poolState(previous);
  const to = poolState(status);
  if (from !== to) out.push({ ...base, type: 'mode', from, to });
  if (status.kind === 'working' && previous.kind === 'working') {
    const free = status.totalData - status.usedData;
    const before = previous.totalData - previous.usedData;
    if (free <= lowWaterMark && before > lowWaterMark)
      out.push({ ...base, type: 'low-water-mark', freeDataBlocks: dataBlocks(free), lowWaterMark });
    const mark = status.metadataLowWatermark;
    if (mark !== undefined) {
      const freeMeta = status.totalMetadata - status.usedMetadata;
      const beforeMeta = previous.totalMetadata - previous.usedMetadata;
      if (freeMeta <= mark && beforeMeta > mark)
        out.push({ ...base, type: 'metadata-low', freeMetadataBlocks: metaBlocks(freeMeta), metadataLowWatermark: mark });
    }
    if (status.needsCheck && !previous.needsCheck) out.push({ ...base, type: 'needs-check' });
  }
  if (!out.length) out.push({ ...base, type: 'other' });
  return out;
}
