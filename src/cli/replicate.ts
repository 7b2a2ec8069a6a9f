/**
 * `dmthin replicate`: continuous asynchronous replication of a live thin
 * device into a local target or through a command. One line (or one JSON
 * object) per confirmed cycle on stdout.
 */
import type { Command } from 'commander';
import { DmthinError, UsageError } from '../errors';
import { MAX_TIMER_SECONDS } from '../units';
import { CliContext, printErr, cliWording, plural, formatVersionArg, parseIntArg, print } from './common';
import { toJson, withNulls } from './json';
import { Progress, stderrIsTTY } from './progress';
import { parseSize } from './send';
import { COMMAND_LIST } from './commands';

interface ReplicateCliOpts {
  pool: string;
  thin: string;
  target?: string;
  toCommand?: string;
  create?: boolean;
  full?: boolean;
  receiveState?: string;
  every?: string;
  once?: boolean;
  keep: string;
  ids?: string;
  state?: string;
  size?: string;
  tmpDir?: string;
  formatVersion?: string;
  json?: boolean;
  quiet?: boolean;
}

function parseIds(v: string): { first: number; last: number } {
  const m = /^(\d+)-(\d+)$/.exec(v);
  if (!m) throw new UsageError(`--ids must be FIRST-LAST (thin ids), got '${v}'`);
  return { first: parseIntArg('--ids', m[1], 2 ** 24 - 1), last: parseIntArg('--ids', m[2], 2 ** 24 - 1) };
}

/**
 * --every: whole seconds, a plain decimal as every number option, at most
 * what a Node timer waits (above it the sleep between cycles is 1 ms).
 */
function parseEvery(v: string): number {
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= MAX_TIMER_SECONDS)) throw new UsageError(`--every must be whole seconds from 1 to ${MAX_TIMER_SECONDS} (24.8 days), got '${v}'`);
  return n;
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('replicate')
    .description(COMMAND_LIST.replicate.description)
    .requiredOption('--pool <name>', 'a live thin-pool not managed by LVM (an LVM pool is refused): dm name or device node (needs root and device-mapper)')
    .requiredOption('--thin <id>', 'thin device id to replicate')
    .option('--target <path>', 'block device or regular file to receive into (in this process)')
    .option('--to-command <cmd>', "shell command reading the stream on stdin, exit 0 once it holds it (e.g. 'ssh host dmthin receive --target /dev/vg/replica')")
    .option('--create', 'with --target: create the file target if missing')
    .option('--receive-state <file>', "with --target: the target's receive state file (default as dmthin receive's)")
    .option('--every <seconds>', `start a cycle every SECONDS (whole seconds, 1 to ${MAX_TIMER_SECONDS}) until interrupted`)
    .option('--once', 'one cycle (the default; after an interrupted run, the pending cycle first)')
    .option('--full', 'send the next cycle in full, whatever the target holds (after the receiving side was replaced or reset); increments again after it')
    .option('--keep <n>', 'confirmed snapshots kept in the pool (at least 1: the base of the next increment)', '1')
    .option('--ids <first-last>', 'thin ids replication snapshots may take (default 16773120-16777215); recorded in the state')
    .option('--state <file>', 'replication state file (default /var/lib/dmthin/replicate/<pool>-<thin>.json)')
    .option('--size <bytes>', "the thin device's size when it is not active (suffixes K, M, G, T, P binary; s = sectors)")
    .option('--tmp-dir <dir>', 'where a large extent list is spilled (default TMPDIR)')
    .option('--format-version <n>', 'stream format version sent: 4 (default), or 3, 2 or 1 for a receiving command that reads only those')
    .option('--json', 'one JSON object per cycle instead of a line')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: ReplicateCliOpts) => {
      const c = ctx();
      if ((o.target === undefined) === (o.toCommand === undefined)) throw new UsageError('give exactly one of --target or --to-command');
      if (o.target === undefined && (o.create || o.receiveState !== undefined)) throw new UsageError('--create and --receive-state go with --target');
      if (o.every !== undefined && o.once) throw new UsageError('give --every or --once, not both');
      const every = o.every === undefined ? undefined : parseEvery(o.every);
      const keep = parseIntArg('--keep', o.keep, 4096);
      if (keep < 1) throw new UsageError('--keep must be at least 1 (the base of the next increment)');
      const bar = new Progress('replicate', !o.quiet && !o.json && stderrIsTTY());
      const { replicate } = require('../ops/replicate') as typeof import('../ops/replicate');
      try {
        for await (const r of replicate({
          pool: o.pool,
          thin: parseIntArg('--thin', o.thin, 2 ** 24 - 1),
          target: o.target,
          receive: { create: o.create, stateFile: o.receiveState },
          toCommand: o.toCommand,
          every,
          full: o.full === true,
          keep,
          ids: o.ids === undefined ? undefined : parseIds(o.ids),
          stateFile: o.state,
          deviceSize: o.size === undefined ? undefined : parseSize('--size', o.size),
          tmpDir: o.tmpDir,
          formatVersion: formatVersionArg(o.formatVersion),
          signal: c.signal,
          onProgress: (p) => bar.update(p.bytes, undefined, 'bytes sent'),
        })) {
          bar.stop();
          if (r.notOurs !== undefined) {
            printErr(
              `dmthin replicate: warning: thin ${r.notOurs}, the id an interrupted run had chosen for its snapshot, was made by another program (its times say so): left in the pool, not deleted; give each replication of a pool its own --ids range\n`,
            );
          }
          if (r.abandoned !== undefined) {
            printErr(
              `dmthin replicate: warning: base snapshot ${r.abandoned} changed since it was sent (written, or deleted and made again under its id), ` +
                `so snapshot ${r.snapshot} was sent in full; thin ${r.abandoned} is left in the pool and is no longer replication's: delete it if nobody uses it\n`,
            );
          }
          if (o.json) print(toJson(withNulls(r, ['notOurs', 'fullReason', 'abandoned']), 0) + '\n');
          else {
            const why = {
              first: 'first',
              'base-gone': 'base snapshot gone',
              'base-changed': 'base snapshot changed',
              'target-lacks-base': 'the target does not hold the base',
              'size-changed': 'thin resized',
              asked: '--full',
            } as const;
            const what = r.base === null ? `full (${why[r.fullReason ?? 'first']})` : `since ${r.base}`;
            print(
              `snapshot ${r.snapshot} ${what}${r.resumed ? ' (resumed)' : ''}: ${mib(r.bytes)}, ${plural(r.dataBlocks, 'block')}, ${r.discardBlocks} discarded, ` +
                `${(r.durationMs / 1000).toFixed(1)} s, lag ${(r.lagMs / 1000).toFixed(1)} s${r.deleted.length ? `, deleted ${r.deleted.join(' ')}` : ''}${r.recovered.length ? `, removed unconfirmed ${r.recovered.join(' ')}` : ''}\n`,
            );
          }
        }
      } catch (e) {
        // The library's option names in the CLI's words (a receive's refusals reach replicate as they are).
        throw cliWording(e);
      } finally {
        bar.stop();
      }
    });
}
