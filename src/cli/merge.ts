/**
 * `dmthin merge`: merge a snapshot back into its origin, an external origin
 * device or a thin of the same pool (docs/merge.md).
 */
import type { Command } from 'commander';
import { UsageError } from '../errors';
import { CliContext, printErr, plural, parseIntArg, print } from './common';
import { toJson, withNulls } from './json';
import { Progress, stderrIsTTY } from './progress';
import { COMMAND_LIST } from './commands';

interface MergeCliOpts {
  pool: string;
  snap: string;
  origin?: string;
  externalOrigin?: string;
  keepSnap?: boolean;
  state?: string;
  json?: boolean;
  quiet?: boolean;
}

/**
 * --snap: a thin id. A name there is most likely an LVM snapshot's, which
 * LVM merges itself (the hint); a malformed or too large number gets the range.
 */
function snapArg(v: string, pool: string): number {
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (n <= 2 ** 24 - 1) return n;
  const numberLike = v.trim() !== '' && !Number.isNaN(Number(v.trim()));
  if (numberLike || !/^[A-Za-z0-9+_.-]+(\/[A-Za-z0-9+_.-]+)?$/.test(v)) {
    throw new UsageError(`--snap must be a thin device id (0..16777215), got '${v}'`);
  }
  const vg = v.includes('/') ? '' : pool.includes('/') ? `${pool.split('/')[0]}/` : 'VG/';
  throw new UsageError(`--snap takes a thin device id (a number), got '${v}'; a snapshot LVM made is merged with LVM's own command: lvconvert --merge ${vg}${v}`);
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('merge')
    .description(COMMAND_LIST.merge.description)
    .requiredOption('--pool <name>', 'a live thin-pool not managed by LVM (an LVM pool is refused): dm name or device node (needs root and device-mapper)')
    .requiredOption('--snap <id>', 'thin id of the snapshot to merge')
    .option('--external-origin <device>', 'the read-only external origin of the snapshot: its mapped blocks are copied onto it')
    .option('--origin <id>', 'thin id of the origin in the same pool: it keeps its id and reads what the snapshot read')
    .option('--keep-snap', 'keep the snapshot afterwards (default: deleted once the origin holds its data)')
    .option('--state <file>', 'merge state file (default: under /var/lib/dmthin/merge/)')
    .option('--json', 'print a summary as JSON when done')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: MergeCliOpts) => {
      const c = ctx();
      if ((o.origin === undefined) === (o.externalOrigin === undefined)) throw new UsageError('give --external-origin DEVICE or --origin ID (one of them)');
      const snap = snapArg(o.snap, o.pool);
      const bar = new Progress('merge', !o.quiet && stderrIsTTY());
      const common = {
        snap,
        keepSnap: o.keepSnap === true,
        stateFile: o.state,
        signal: c.signal,
        onProgress: (p: { phase: string; blocks: number; totalBlocks?: number }) => bar.update(p.blocks, p.totalBlocks, p.phase === 'plan' ? 'blocks planned' : 'blocks'),
      };
      const { mergeIntoExternalOrigin, mergeSnapshot } = require('../ops/merge') as typeof import('../ops/merge');
      try {
        const r =
          o.externalOrigin !== undefined
            ? await mergeIntoExternalOrigin(o.pool, { ...common, origin: o.externalOrigin })
            : await mergeSnapshot(o.pool, { ...common, origin: parseIntArg('--origin', o.origin!, 2 ** 24 - 1) });
        bar.stop();
        if (r.discardMethod === 'zeroout' && r.discardedBlocks > 0) {
          printErr(`${c.command}: note: pool ${o.pool} ignores discards: ${plural(r.discardedBlocks, 'block')} only the origin had ${r.discardedBlocks === 1 ? 'was' : 'were'} zeroed, and stay provisioned\n`);
        }
        if (r.undiscardedBlocks) {
          printErr(`${c.command}: note: pool ${o.pool} kept ${r.undiscardedBlocks} of the ${plural(r.discardedBlocks, 'block')} only the origin had although discarded: ${r.undiscardedBlocks === 1 ? 'it was' : 'they were'} zeroed, and stay provisioned\n`);
        }
        c.done = 'the merge completed';
        if (o.json) print(toJson(withNulls(r, ['discardMethod', 'undiscardedBlocks'])) + '\n');
      } finally {
        bar.stop();
      }
    });
}
