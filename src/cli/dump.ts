/** `dmthin dump`: thin_dump-compatible output (XML, human_readable) or JSON. */
import { type Command, Option } from 'commander';
import { UsageError, unknownFormat } from '../errors';
import type { DumpFormat } from '../thin/dump';
import { collect, type CliContext } from './common';
import { barBesideOutput, Progress } from './progress';
import { isThinIdText, MetadataSnapOpts, openMetadataSource, thinIdArg } from './metadata-source';
import { checkOutputPath, commandOutput, isStdoutPath } from './output';
import { COMMAND_LIST } from './commands';

interface DumpCliOpts extends MetadataSnapOpts {
  devId?: string[];
  skipMappings?: boolean;
  format: string;
  output?: string;
  quiet?: boolean;
  repair?: boolean;
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('dump')
    .description(COMMAND_LIST.dump.description)
    .argument('<metadata>', 'metadata device or file, or with -m a live pool (dm name, VG/LV or device node)')
    .option('-m, --metadata-snap', 'read through the held metadata snapshot (-mBLOCK / --metadata-snap=BLOCK: must be the held root)')
    .option('--dev-id <id>', 'dump only this device (repeatable; ids not in the pool are ignored, as by thin_dump): thin id (decimal, any size), or with a live LVM pool an LV name (VG/LV or LV; needs lvm2)', collect)
    .option('--skip-mappings', 'devices only, no mappings')
    .option('-f, --format <format>', 'xml, human_readable or json', 'xml')
    .option('-o, --output <file>', 'write to FILE instead of stdout (through a temporary file, renamed over FILE when complete)')
    .option('-q, --quiet', 'no progress bar')
    // thin_dump's -r: refused by name, with what to use instead.
    .addOption(new Option('-r, --repair').hideHelp())
    .action(async (metadata: string, o: DumpCliOpts) => {
      const c = ctx();
      if (o.repair) throw new UsageError('-r/--repair is not supported (dump never repairs): find the damage with dmthin check, and write a repaired copy with thin_repair');
      const format = o.format as DumpFormat;
      if (!['xml', 'human_readable', 'json'].includes(format)) throw unknownFormat(o.format, ['xml', 'human_readable', 'json']);
      await checkOutputPath(o.output, [{ path: metadata, role: 'the metadata input' }]);
      const { metadata: md, pool } = await openMetadataSource(metadata, o, c);
      c.onCleanup(() => md.close());
      const devIds = o.devId && (await Promise.all(o.devId.map((v) => (isThinIdText(v) ? Number(v) : thinIdArg('--dev-id', v, pool, Number.MAX_SAFE_INTEGER))))).filter((id) => id <= Number.MAX_SAFE_INTEGER);
      const { out, commit } = await commandOutput(o.output, c, [{ path: metadata, role: 'the metadata input' }]);
      const bar = new Progress('dump', !o.quiet && barBesideOutput(o.output === undefined || isStdoutPath(o.output)));
      try {
        // Loaded when the command runs, not when it is registered (its --help needs none of it).
        const { dump } = require('../thin/dump') as typeof import('../thin/dump');
        await dump(md, out, {
          format,
          devIds,
          skipMappings: o.skipMappings,
          signal: c.signal,
          onProgress: (p) => bar.update(p.mappings, p.total),
        });
      } finally {
        bar.stop();
      }
      await commit();
    });
}
