/** `dmthin rmap`: which thin devices map given data blocks, as thin_rmap 0.9.0 prints it (see src/thin/rmap.ts for the one difference). */
import type { Command } from 'commander';
import { UsageError } from '../errors';
import { OutputSink } from '../output/sink';
import type { DataRegion } from '../thin/rmap';
import { CliContext, collect } from './common';
import { barBesideOutput, Progress } from './progress';
import { MetadataSnapOpts, openMetadata } from './metadata-source';
import { checkOutputPath, commandOutput, isStdoutPath } from './output';
import { COMMAND_LIST } from './commands';

interface RmapCliOpts extends MetadataSnapOpts {
  region?: string[];
  output?: string;
  quiet?: boolean;
}

const U64_END = 1n << 64n;

/** Runs held in memory before rmap spills them to TMPDIR; DMTHIN_RMAP_RUNS_IN_MEMORY (tests) lowers it. */
function runsInMemory(): number | undefined {
  const v = process.env.DMTHIN_RMAP_RUNS_IN_MEMORY;
  return v && /^[0-9]+$/.test(v) && Number(v) >= 16 ? Number(v) : undefined;
}

/**
 * BEGIN..END, decimal, END one past the last block, both below 2^64. Stricter
 * than thin_rmap 0.9.0, which ignores text after END ("0..1e3" is 0..1 there)
 * and wraps a minus sign modulo 2^64 ("0..-1" is everything): both are refused
 * here (test/fixtures/ORACLE-NOTES.md §7).
 */
function parseRegion(v: string): DataRegion {
  const m = /^([0-9]+)\.\.([0-9]+)$/.exec(v);
  if (!m) throw new UsageError(`bad region '${v}': write BEGIN..END in data blocks, e.g. 5..45 for blocks 5 to 44`);
  const [begin, end] = [BigInt(m[1]), BigInt(m[2])];
  if (begin >= U64_END || end >= U64_END) throw new UsageError(`bad region '${v}': block numbers are below 2^64`);
  if (end <= begin) throw new UsageError(`bad region '${v}': END must be greater than BEGIN (END is one past the last block)`);
  // Data blocks are below 2^40: bounds past 2^53 match nothing more, so they are clamped.
  const MAX = BigInt(Number.MAX_SAFE_INTEGER);
  return { begin: Number(begin < MAX ? begin : MAX - 1n), end: Number(end < MAX ? end : MAX) };
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('rmap')
    .description(COMMAND_LIST.rmap.description)
    .argument('<metadata>', 'metadata device or file, or with -m a live pool (dm name, VG/LV or device node)')
    .option('--region <range>', 'data blocks BEGIN..END, decimal, END one past the last (5..45 is blocks 5 to 44; repeatable)', collect)
    .option('-m, --metadata-snap', 'read through the held metadata snapshot (-mBLOCK / --metadata-snap=BLOCK: must be the held root)')
    .option('-o, --output <file>', 'write to FILE instead of stdout (through a temporary file, renamed over FILE when complete)')
    .option('-q, --quiet', 'no progress bar')
    .action(async (metadata: string, o: RmapCliOpts) => {
      const c = ctx();
      const regions = (o.region ?? []).map(parseRegion);
      if (regions.length === 0) throw new UsageError('no --region given: name the data blocks to look up, e.g. --region 0..1000');
      await checkOutputPath(o.output, [{ path: metadata, role: 'the metadata input' }]);
      const md = await openMetadata(metadata, o, c);
      c.onCleanup(() => md.close());
      const { out, commit } = await commandOutput(o.output, c, [{ path: metadata, role: 'the metadata input' }]);
      const bar = new Progress('rmap', !o.quiet && barBesideOutput(o.output === undefined || isStdoutPath(o.output)));
      const sink = new OutputSink(out, undefined, c.signal);
      try {
        // Loaded when the command runs, not when it is registered (its --help needs none of it).
        const { rmapRuns, writeRmapText } = require('../thin/rmap') as typeof import('../thin/rmap');
        const runs = await rmapRuns(md, regions, { signal: c.signal, onProgress: (p) => bar.update(p.mappings, p.total), runsInMemory: runsInMemory() });
        bar.stop();
        // Every tree is read: through a snapshot released meanwhile, nothing is printed (ESTALE);
        // then the reader's buffers and caches go before the sort needs its memory.
        await c.checkInputs();
        await md.close();
        await writeRmapText(runs, sink, c.signal);
        await sink.flush();
      } finally {
        bar.stop();
      }
      await commit();
    });
}
