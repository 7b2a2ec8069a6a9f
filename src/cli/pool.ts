/** `dmthin pool ...`: status and the pool messages of a live thin-pool. */
import type { Command } from 'commander';
import type { ThinPool as ThinPoolT } from '../pool/thin-pool';
import type { ThinPoolStatus } from '../dm/targets/thin-pool';
import { UsageError } from '../errors';
import { CliContext, parseIntArg } from './common';
import { toJson } from './json';

function u64Arg(name: string, v: string): bigint {
  if (!/^[0-9]+$/.test(v) || BigInt(v) >= 1n << 64n) throw new UsageError(`${name} must be an integer 0..2^64-1, got '${v}'`);
  return BigInt(v);
}

/** Thin ids are checked before anything is sent (0..2^24-1). */
const thinIdArg = (name: string, v: string) => parseIntArg(name, v, 2 ** 24 - 1);

/** Loaded on use: the dm layer is not needed by the read-only commands. */
const ThinPool = { open: (name: string) => (require('../pool/thin-pool') as { ThinPool: typeof ThinPoolT }).ThinPool.open(name) };

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

export function register(program: Command, ctx: () => CliContext): void {
  const pool = program.command('pool').description('status and messages of a live thin-pool (needs root and device-mapper)');

  pool
    .command('status')
    .description('typed status of a thin-pool')
    .argument('<name>', 'dm name of the pool')
    .option('--json', 'print JSON')
    .option('--noflush', 'do not commit metadata before reporting')
    .action(async (name: string, o: { json?: boolean; noflush?: boolean }) => {
      ctx();
      const s = await (await ThinPool.open(name)).status({ noflush: o.noflush });
      process.stdout.write(o.json ? toJson(statusJson(name, s)) + '\n' : formatStatus(name, s));
    });

  pool
    .command('create-thin')
    .description('create_thin: a new thin device ID')
    .argument('<name>')
    .argument('<id>')
    .action(async (name: string, id: string) => {
      ctx();
      const i = thinIdArg('id', id);
      await (await ThinPool.open(name)).createThin(i);
    });

  pool
    .command('create-snap')
    .description('create_snap: snapshot ID of ORIGIN (active origin devices are suspended around it)')
    .argument('<name>')
    .argument('<id>')
    .argument('<origin>')
    .option('--no-suspend', 'do not suspend active origin devices (you did)')
    .action(async (name: string, id: string, origin: string, o: { suspend: boolean }) => {
      ctx();
      const [i, from] = [thinIdArg('id', id), thinIdArg('origin', origin)];
      await (await ThinPool.open(name)).createSnap(i, from, { suspendOrigin: o.suspend });
    });

  pool
    .command('delete')
    .description('delete: remove thin device ID and free its blocks')
    .argument('<name>')
    .argument('<id>')
    .action(async (name: string, id: string) => {
      ctx();
      const i = thinIdArg('id', id);
      await (await ThinPool.open(name)).delete(i);
    });

  pool
    .command('set-transaction-id')
    .description('set_transaction_id: compare-and-swap the pool transaction id')
    .argument('<name>')
    .argument('<current>')
    .argument('<new>')
    .action(async (name: string, cur: string, next: string) => {
      ctx();
      const [c, n] = [u64Arg('current', cur), u64Arg('new', next)];
      await (await ThinPool.open(name)).setTransactionId(c, n);
    });

  pool
    .command('reserve-metadata-snap')
    .description('reserve_metadata_snap, and print the held root; it stays held until release-metadata-snap')
    .argument('<name>')
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
    .argument('<name>')
    .action(async (name: string) => {
      ctx();
      await (await ThinPool.open(name)).releaseMetadataSnap();
    });
}
