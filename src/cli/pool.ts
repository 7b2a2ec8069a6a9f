/** `dmthin pool ...`: status and the pool messages of a live thin-pool. */
import type { Command } from 'commander';
import type { ThinPool as ThinPoolT } from '../pool/thin-pool';
import type { ThinPoolStatus } from '../dm/targets/thin-pool';
import type { PoolEvent } from '../pool/events';
import { AbortError, DmthinError, UsageError } from '../errors';
import { CliContext, parseIntArg } from './common';
import { toJson } from './json';
import { COMMAND_LIST } from './commands';

function u64Arg(name: string, v: string): bigint {
  if (!/^[0-9]+$/.test(v) || BigInt(v) >= 1n << 64n) throw new UsageError(`${name} must be an integer 0..2^64-1, got '${v}'`);
  return BigInt(v);
}

/** Thin ids are checked before anything is sent (0..2^24-1). */
const thinIdArg = (name: string, v: string) => parseIntArg(name, v, 2 ** 24 - 1);

const POOL_ARG = 'the pool: dm name, VG/LV (LVM) or device node (/dev/mapper/NAME, /dev/VG/LV)';
const THIN_ID = 'thin device id (decimal, 0..16777215)';

/** Loaded on use: the dm layer is not needed by the read-only commands. */
const ThinPool = { open: (name: string) => (require('../pool/thin-pool') as { ThinPool: typeof ThinPoolT }).ThinPool.open(name) };

/**
 * A pool whose thin devices and transaction id the caller may change: not an
 * LVM pool, whose own metadata records both and would fall out of step.
 */
async function openUnmanaged(name: string, what: string): Promise<ThinPoolT> {
  const p = await ThinPool.open(name);
  if (p.lvm) {
    throw new UsageError(
      `${name} is LVM's thin pool ${p.lvm.vg}/${p.lvm.lv}: ${what} behind LVM's back would leave LVM's metadata (thin ids, transaction id) out of step; use lvcreate/lvremove instead`,
      { device: p.name },
    );
  }
  return p;
}

export function formatStatus(name: string, s: ThinPoolStatus): string {
  if (s.kind !== 'working') return `${name}: ${s.kind === 'fail' ? 'Fail' : 'Error'}\n`;
  const rows: [string, string][] = [
    ['transaction id', String(s.transactionId)],
    ['metadata blocks used', `${s.usedMetadata}/${s.totalMetadata}`],
    ['data blocks used', `${s.usedData}/${s.totalData}`],
    ['held metadata root', s.heldMetadataRoot === null ? '-' : String(s.heldMetadataRoot)],
  ];
  if (s.mode !== undefined) rows.push(['mode', s.mode]);
  if (s.discard !== undefined) rows.push(['discard', s.discard]);
  if (s.noSpacePolicy !== undefined) rows.push(['no-space policy', s.noSpacePolicy === 'queue' ? 'queue_if_no_space' : 'error_if_no_space']);
  if (s.needsCheck !== undefined) rows.push(['needs check', s.needsCheck ? 'yes' : 'no']);
  if (s.metadataLowWatermark !== undefined) rows.push(['metadata low watermark', String(s.metadataLowWatermark)]);
  if (s.extra.length) rows.push(['other fields', s.extra.join(' ')]);
  const w = Math.max(...rows.map((r) => r[0].length));
  return `${name}\n` + rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}\n`).join('');
}

/** One line per event: `EVENT_NR TYPE details`. */
export function formatEvent(ev: PoolEvent): string {
  switch (ev.type) {
    case 'low-water-mark':
      return `${ev.eventNr} low-water-mark free=${ev.freeDataBlocks} mark=${ev.lowWaterMark}\n`;
    case 'mode':
      return `${ev.eventNr} mode ${ev.from} -> ${ev.to}\n`;
    case 'metadata-low':
      return `${ev.eventNr} metadata-low free=${ev.freeMetadataBlocks} watermark=${ev.metadataLowWatermark}\n`;
    default:
      return `${ev.eventNr} ${ev.type}\n`;
  }
}

/** The event as one JSON line: its fields and the status after it (not the previous one). */
export function eventJson(pool: string, ev: PoolEvent): string {
  const { previous: _previous, status, type, ...fields } = ev;
  const { pool: _p, ...st } = statusJson(pool, status);
  return toJson({ pool, type, ...fields, status: st }, 0) + '\n';
}

/**
 * The --json object (docs/json.md): transactionId a decimal string, block
 * counts numbers; the fields an older kernel does not report are null, so
 * every key of a working pool is always there.
 */
export function statusJson(name: string, s: ThinPoolStatus): Record<string, unknown> {
  if (s.kind !== 'working') return { pool: name, kind: s.kind };
  return {
    pool: name,
    ...s,
    mode: s.mode ?? null,
    discard: s.discard ?? null,
    noSpacePolicy: s.noSpacePolicy ?? null,
    needsCheck: s.needsCheck ?? null,
    metadataLowWatermark: s.metadataLowWatermark ?? null,
  };
}

/** The longest --timeout: a timer takes at most 2^31-1 ms. */
const MAX_TIMEOUT_S = Math.floor((2 ** 31 - 1) / 1000);

/** An integer 1..max, or a usage error that says what is taken (`what`, with the range). */
function positiveArg(flag: string, v: string, max: number, what: string): number {
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= max)) throw new UsageError(`${flag} must be ${what}; got '${v}'`);
  return n;
}

export function register(program: Command, ctx: () => CliContext): void {
  const pool = program.command('pool').description(COMMAND_LIST.pool.description);

  pool
    .command('status')
    .description('typed status of a thin-pool')
    .argument('<name>', POOL_ARG)
    .option('--json', 'print JSON')
    .option('--noflush', 'do not commit metadata before reporting')
    .action(async (name: string, o: { json?: boolean; noflush?: boolean }) => {
      ctx();
      const s = await (await ThinPool.open(name)).status({ noflush: o.noflush });
      process.stdout.write(o.json ? toJson(statusJson(name, s)) + '\n' : formatStatus(name, s));
    });

  pool
    .command('events')
    .description('print the pool\'s events as they come (low-water-mark, mode, needs-check, metadata-low, other), one per line')
    .argument('<name>', POOL_ARG)
    .option('--json', 'one JSON object per line')
    .option('--count <n>', 'exit after N events, N >= 1 (status 1 if --timeout ends the wait first)')
    .option('--timeout <seconds>', `stop after this many seconds, 1..${MAX_TIMEOUT_S} (status 0 without --count)`)
    .action(async (name: string, o: { json?: boolean; count?: string; timeout?: string }) => {
      ctx();
      const count = o.count !== undefined ? positiveArg('--count', o.count, Number.MAX_SAFE_INTEGER, 'a positive integer (1 or more)') : undefined;
      const seconds = o.timeout !== undefined ? positiveArg('--timeout', o.timeout, MAX_TIMEOUT_S, `whole seconds, 1..${MAX_TIMEOUT_S}`) : undefined;
      const p = await ThinPool.open(name);
      const signal = seconds !== undefined ? AbortSignal.timeout(seconds * 1000) : undefined;
      let seen = 0;
      try {
        for await (const ev of p.events({ signal })) {
          process.stdout.write(o.json ? eventJson(name, ev) : formatEvent(ev));
          if (count !== undefined && ++seen >= count) return;
        }
      } catch (err) {
        if (!(err instanceof AbortError && signal?.aborted)) throw err;
        if (count !== undefined)
          throw new DmthinError('ETIMEDOUT', `${seen} of ${count} events of pool ${name} within ${seconds} s; wait longer, or expect fewer`, { device: name });
      }
    });

  pool
    .command('create-thin')
    .description('create_thin: a new thin device ID')
    .argument('<name>', POOL_ARG)
    .argument('<id>', THIN_ID)
    .action(async (name: string, id: string) => {
      ctx();
      const i = thinIdArg('id', id);
      await (await openUnmanaged(name, 'creating a thin device')).createThin(i);
    });

  pool
    .command('create-snap')
    .description('create_snap: snapshot ID of ORIGIN (active origin devices are suspended around it)')
    .argument('<name>', POOL_ARG)
    .argument('<id>', THIN_ID)
    .argument('<origin>', 'thin device id of the origin (decimal, 0..16777215)')
    .option('--no-suspend', 'do not suspend active origin devices (you did)')
    .action(async (name: string, id: string, origin: string, o: { suspend: boolean }) => {
      ctx();
      const [i, from] = [thinIdArg('id', id), thinIdArg('origin', origin)];
      await (await openUnmanaged(name, 'creating a snapshot')).createSnap(i, from, { suspendOrigin: o.suspend });
    });

  pool
    .command('delete')
    .description('delete: remove thin device ID and free its blocks')
    .argument('<name>', POOL_ARG)
    .argument('<id>', THIN_ID)
    .action(async (name: string, id: string) => {
      ctx();
      const i = thinIdArg('id', id);
      await (await openUnmanaged(name, 'deleting a thin device')).delete(i);
    });

  pool
    .command('set-transaction-id')
    .description('set_transaction_id: compare-and-swap the pool transaction id')
    .argument('<name>', POOL_ARG)
    .argument('<current>', 'the transaction id the pool must have now (decimal, 0..2^64-1)')
    .argument('<new>', 'the transaction id to set (decimal, 0..2^64-1)')
    .action(async (name: string, cur: string, next: string) => {
      ctx();
      const [c, n] = [u64Arg('current', cur), u64Arg('new', next)];
      await (await openUnmanaged(name, 'setting the transaction id')).setTransactionId(c, n);
    });

  pool
    .command('reserve-metadata-snap')
    .description('reserve_metadata_snap, and print the held root; it stays held until release-metadata-snap')
    .argument('<name>', POOL_ARG)
    .action(async (name: string) => {
      ctx();
      const p = await ThinPool.open(name);
      await p.message('reserve_metadata_snap');
      const s = await p.workingStatus();
      process.stdout.write(`${s.heldMetadataRoot}\n`);
    });

  pool
    .command('release-metadata-snap')
    .description('release_metadata_snap')
    .argument('<name>', POOL_ARG)
    .action(async (name: string) => {
      ctx();
      await (await ThinPool.open(name)).releaseMetadataSnap();
    });
}
