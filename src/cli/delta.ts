/** `dmthin delta`: thin_delta-compatible XML (plain and --verbose), or JSON. */
import type { Command } from 'commander';
import { UsageError, unknownFormat } from '../errors';
import type { DeltaSubject } from '../thin/delta-format';
import { CliContext, parseIntArg } from './common';
import { checkMetadataSpaceMapIndex, isThinIdText, MetadataSnapOpts, openMetadataSource, thinIdArg } from './metadata-source';
import { checkOutputPath, commandOutput } from './output';
import { COMMAND_LIST } from './commands';

interface DeltaCliOpts extends MetadataSnapOpts {
  snap1?: string;
  thin1?: string;
  snap2?: string;
  thin2?: string;
  root1?: string;
  root2?: string;
  verbose?: boolean;
  same: boolean;
  format: string;
  output?: string;
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('delta')
    .description(COMMAND_LIST.delta.description)
    .argument('<metadata>', 'metadata device or file, or with -m a live pool (dm name, VG/LV or device node)')
    .option('--snap1, --thin1 <id>', 'left device: thin id (decimal), or with a live LVM pool an LV name (VG/LV or LV; needs lvm2)')
    .option('--snap2, --thin2 <id>', 'right device: thin id or LV name, as --snap1')
    .option('--root1 <block>', 'left: metadata block number (decimal) of a bottom-level mapping root, instead of a device')
    .option('--root2 <block>', 'right: metadata block number (decimal) of a bottom-level mapping root, instead of a device')
    .option('-m, --metadata-snap', 'read through the held metadata snapshot (-mBLOCK / --metadata-snap=BLOCK: must be the held root)')
    .option('--verbose', 'ranges with their data blocks')
    .option('--no-same', 'leave out blocks both devices map the same way (shared subtrees are then not read at all)')
    .option('-f, --format <format>', 'xml or json', 'xml')
    .option('-o, --output <file>', 'write to FILE instead of stdout (through a temporary file, renamed over FILE when complete)')
    .action(async (metadata: string, o: DeltaCliOpts) => {
      const c = ctx();
      if (o.format !== 'xml' && o.format !== 'json') throw unknownFormat(o.format, ['xml', 'json']);
      // commander stores "--snap1, --thin1" under the first long name.
      const left = o.snap1 ?? o.thin1;
      const right = o.snap2 ?? o.thin2;
      let subject: DeltaSubject | undefined;
      if (o.root1 !== undefined || o.root2 !== undefined) {
        if (o.root1 === undefined || o.root2 === undefined) throw new UsageError('--root1 and --root2 go together');
        if (left !== undefined || right !== undefined) throw new UsageError('give devices (--snap1/--snap2) or roots (--root1/--root2), not both');
        subject = { leftRoot: parseIntArg('--root1', o.root1), rightRoot: parseIntArg('--root2', o.root2) };
      } else {
        if (left === undefined) throw new UsageError('--snap1 (or --thin1) is required');
        if (right === undefined) throw new UsageError('--snap2 (or --thin2) is required');
        // Numbers are checked before anything is opened; LV names need the pool. Any id the
        // metadata can hold (thin_restore writes ids past the kernel's 24 bits; thin_delta reads them).
        if (isThinIdText(left)) parseIntArg('--snap1', left);
        if (isThinIdText(right)) parseIntArg('--snap2', right);
      }
      await checkOutputPath(o.output, [{ path: metadata, role: 'the metadata input' }]);
      const { metadata: md, pool } = await openMetadataSource(metadata, o, c);
      c.onCleanup(() => md.close());
      await checkMetadataSpaceMapIndex(md, o);
      subject ??= { left: await thinIdArg('--snap1', left!, pool, Number.MAX_SAFE_INTEGER), right: await thinIdArg('--snap2', right!, pool, Number.MAX_SAFE_INTEGER) };
      const { out, commit } = await commandOutput(o.output, c, [{ path: metadata, role: 'the metadata input' }]);
      // Loaded when the command runs, not when it is registered (its --help needs none of it).
      const { writeDelta } = require('../thin/delta-format') as typeof import('../thin/delta-format');
      await writeDelta(md, out, subject, {
        format: o.format,
        verbose: o.verbose,
        includeSame: o.same,
        signal: c.signal,
      });
      await commit();
    });
}
