/** `dmthin ls`: thin_ls-compatible per-device usage table, or JSON. */
import type { Command } from 'commander';
import { DEFAULT_LS_FIELDS, LS_FIELDS, needsMappings, parseLsFields } from '../thin/ls-fields';
import { CliContext, stdout } from './common';
import { Progress, stderrIsTTY } from './progress';
import { checkMetadataSpaceMapIndex, MetadataSnapOpts, openMetadata } from './metadata-source';
import { refuseStdoutOverInputs } from './output';
import { COMMAND_LIST } from './commands';

interface LsCliOpts extends MetadataSnapOpts {
  format?: string;
  headers: boolean;
  json?: boolean;
  quiet?: boolean;
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('ls')
    .description(COMMAND_LIST.ls.description)
    .argument('<metadata>', 'metadata device or file, or with -m a live pool (dm name, VG/LV or device node)')
    .option('-m, --metadata-snap', 'read through the held metadata snapshot (-mBLOCK, digits, / --metadata-snap=BLOCK: must be the held root; -mq is -m -q)')
    // -o is the field list, as in thin_ls (in dump, delta, rmap and send it is --output).
    .option('-o, --format <fields>', `comma-separated field names, case-sensitive (as thin_ls: here -o is the field list, not an output file): ${LS_FIELDS.join(', ')} (default: ${DEFAULT_LS_FIELDS.join(',')})`)
    .option('--no-headers', 'omit the header line')
    .option('--json', 'print a JSON array of objects keyed by field name')
    .option('-q, --quiet', 'no progress bar')
    .action(async (metadata: string, o: LsCliOpts) => {
      const c = ctx();
      const fields = o.format !== undefined ? parseLsFields(o.format) : [...DEFAULT_LS_FIELDS];
      // The table and usage code loads when the command runs, not when it is registered (its --help needs none of it).
      const { exclusiveUsage, writeDetailsTable, writeLsJson } = require('../thin/ls') as typeof import('../thin/ls');
      refuseStdoutOverInputs([{ path: metadata, role: 'the metadata input' }]);
      const md = await openMetadata(metadata, o, c);
      c.onCleanup(() => md.close());
      await checkMetadataSpaceMapIndex(md, o);
      const dbs = md.superblock.dataBlockSize;
      // Fields from the details tree are read from that tree alone, as
      // thin_ls 0.9.0 reads them: no mapping tree, not even its top level.
      // Written from the table's columns (and EXCLUSIVE's): no object per device (70,000 devices).
      let table;
      let excl;
      if (!fields.some(needsMappings)) table = await md.detailsTable({ signal: c.signal });
      else {
        const bar = new Progress('ls', !o.quiet && stderrIsTTY());
        try {
          ({ table, exclusive: excl } = await exclusiveUsage(md, { signal: c.signal, onProgress: (p) => bar.update(p.mappings, p.total) }));
        } finally {
          bar.stop();
        }
      }
      // All read before a line is written: a snapshot released meanwhile prints nothing.
      await c.checkInputs();
      if (o.json) await writeLsJson(table, fields, dbs, stdout(), excl, c.signal);
      else await writeDetailsTable(table, fields, dbs, o.headers, stdout(), excl, c.signal);
    });
}
