/**
 * `dmthin check`: verify pool metadata (what thin_check checks, and the data
 * space map, mapped_blocks and cycles besides). Exit 0 when clean (or only
 * non-fatal problems with --ignore-non-fatal-errors), 1 otherwise.
 */
import type { Command } from 'commander';
import { AbortError, DmthinError, MetadataError, UsageError } from '../errors';
import type { CheckPhase, CheckProblem, CheckReport } from '../thin/check';
import { CliContext, printErr, plural, errorLine, print } from './common';
import { barBesideOutput, Progress, stderrIsTTY } from './progress';
import { toJson } from './json';
import { MetadataSnapOpts, namesPool, openMetadata } from './metadata-source';
import { refuseStdoutOverInputs, writeStdout } from './output';
import { COMMAND_LIST } from './commands';

interface CheckCliOpts extends MetadataSnapOpts {
  quiet?: boolean;
  superBlockOnly?: boolean;
  skipMappings?: boolean;
  ignoreNonFatalErrors?: boolean;
  json?: boolean;
}

// The checker loads when the command runs, not when it is registered (its --help needs none of it).
const thinCheck = () => require('../thin/check') as typeof import('../thin/check');
const btree = () => require('../pdata/btree') as typeof import('../pdata/btree');

const PHASES: Record<CheckPhase, string> = {
  superblock: 'checking the superblock',
  details: 'checking the device details tree',
  'mapping-top': 'checking the top-level mapping tree',
  mappings: 'checking every device mapping tree',
  'metadata-snap': 'checking the metadata snapshot superblock and its trees',
  'data-sm': 'checking the data space map against a recount of the mappings',
  'metadata-sm': 'checking the metadata space map against a recount of every metadata block',
};

const MAX_U64 = (1n << 64n) - 1n;
const keyText = (k: bigint): string => (k === MAX_U64 ? 'end' : String(k));

/** Where a problem can be that is not a btree (CheckProblem.tree; JSON keeps the code names). */
const PLACES: Record<string, string> = { superblock: 'superblock', 'data-sm': 'data space map', 'metadata-sm': 'metadata space map' };

/** One line naming the problem, the block, the tree, the device and the key range. */
function problemLine(p: CheckProblem): string {
  const where: string[] = [];
  if (p.block !== undefined) where.push(p.nrBlocks ? `blocks ${p.block}..${p.block + p.nrBlocks - 1}` : `block ${p.block}`);
  if (p.tree !== undefined) where.push(PLACES[p.tree] ?? btree().treeName(p.tree));
  if (p.devId !== undefined) where.push(`device ${p.devId}`);
  if (p.keys) where.push(`keys ${keyText(p.keys[0])}..${keyText(p.keys[1])}`);
  return `${p.severity === 'fatal' ? 'error' : 'warning'} [${p.kind}]${where.length ? ` (${where.join(', ')})` : ''}: ${p.message}`;
}

/**
 * The --json object (docs/json.md): u64 keys and transaction ids as decimal
 * strings, block numbers and counts as numbers, every key always present.
 */
export function reportJson(r: CheckReport, read: 'all' | 'no-mappings' | 'superblock' | 'nothing' = 'all'): unknown {
  // What was not read is null, never 0 (as the text says "not read").
  const c = r.counts;
  const opened = read !== 'nothing';
  return {
    problems: r.problems.map((p) => ({
      severity: p.severity,
      kind: p.kind,
      block: p.block ?? null,
      nrBlocks: p.nrBlocks ?? null,
      devId: p.devId ?? null,
      tree: p.tree ?? null,
      keys: p.keys ? [String(p.keys[0]), String(p.keys[1])] : null,
      message: p.message,
    })),
    fatal: r.fatal,
    nonFatal: r.nonFatal,
    omitted: r.omitted,
    spaceMapsChecked: r.spaceMapsChecked,
    counts: {
      devices: read === 'all' || read === 'no-mappings' ? c.devices : null,
      mappings: read === 'all' ? c.mappings : null,
      metadataBlocksInUse: r.spaceMapsChecked ? c.metadataBlocksInUse : null,
      dataBlocksInUse: r.spaceMapsChecked ? c.dataBlocksInUse : null,
      metadataBlocks: opened ? c.metadataBlocks : null,
      dataBlocks: opened ? c.dataBlocks : null,
      transactionId: opened ? c.transactionId.toString() : null,
      heldRoot: opened && c.heldRoot !== 0 ? c.heldRoot : null, // 0: none held
    },
  };
}

function summary(r: CheckReport, why: string, read: 'all' | 'no-mappings' | 'superblock' | 'nothing'): string {
  const c = r.counts;
  const lines: string[] = [];
  // What was not read is said so, never counted as 0.
  if (read === 'nothing') lines.push('devices, mappings and transaction not read');
  else {
    const devices = read === 'superblock' ? 'devices and mappings not read' : `${plural(c.devices, 'device')}, ${read === 'no-mappings' ? 'mappings not read' : plural(c.mappings, 'mapping')}`;
    lines.push(`${devices}, transaction ${c.transactionId}${c.heldRoot ? `, metadata snapshot held at block ${c.heldRoot}` : ''}`);
  }
  if (r.spaceMapsChecked) {
    lines.push(`space maps checked: ${c.metadataBlocksInUse} of ${c.metadataBlocks} metadata blocks and ${c.dataBlocksInUse} of ${c.dataBlocks} data blocks in use`);
  } else lines.push(`space maps not checked${why ? ` (${why})` : ''}`);
  if (r.omitted) lines.push(`${r.omitted} more ${r.omitted === 1 ? 'problem' : 'problems'} not listed`);
  lines.push(r.fatal + r.nonFatal === 0 ? 'no problems found' : `${plural(r.fatal + r.nonFatal, 'problem')} found: ${r.fatal} fatal, ${r.nonFatal} non-fatal`);
  return lines.join('\n') + '\n';
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('check')
    .description(COMMAND_LIST.check.description)
    .argument('<metadata>', 'metadata device or file, or a live pool (dm name, VG/LV or device node; checked through its metadata snapshot)')
    .option('-q, --quiet', 'print no text, no error line: only the exit status tells (with --json, only the JSON report)')
    .option('--super-block-only', 'check the superblock only')
    .option('--skip-mappings', 'check the device details and top-level trees only (no mapping trees, no space maps)')
    .option('--ignore-non-fatal-errors', 'exit 0 when only non-fatal problems (leaks, overstated counts, hints, mapped_blocks) are found')
    .option('-m, --metadata-snap', 'check the held metadata snapshot, not the live trees; space maps are not checked (-mBLOCK, digits, / --metadata-snap=BLOCK: must be the held root; -mq is -m -q)')
    .option('--json', 'print the report as one JSON object')
    .action(async (metadata: string, o: CheckCliOpts) => {
      const c = ctx();
      refuseStdoutOverInputs([{ path: metadata, role: 'the metadata input' }]);
      const viaPool = await namesPool(metadata);
      // A live pool can only be read through a metadata snapshot.
      const src: MetadataSnapOpts = viaPool && !o.metadataSnap && o.metadataSnapBlock === undefined ? { ...o, metadataSnap: true, snapImplied: true } : o;
      const text = !o.quiet && !o.json;
      // Its phase lines go to stdout as it works: a bar only beside them, as dump's and rmap's.
      const bar = new Progress('check', text && barBesideOutput(true));
      let report: CheckReport;
      let why = '';
      let opened = false;
      // Why the metadata could not be opened, when that is not a check finding (no such file, no snapshot held).
      let openError: DmthinError | undefined;
      try {
        const md = await openMetadata(metadata, src, c);
        opened = true;
        c.onCleanup(() => md.close());
        if (md.metadataSnap !== null) why = 'read through the metadata snapshot: the live space maps keep changing';
        else if (o.superBlockOnly) why = '--super-block-only';
        else if (o.skipMappings) why = '--skip-mappings';
        if (text && md.metadataSnap !== null) print(`reading the metadata snapshot at block ${md.metadataSnap}\n`);
        let phase: CheckPhase | undefined;
        report = await thinCheck().checkMetadata(md, {
          superblockOnly: o.superBlockOnly,
          skipMappings: o.skipMappings,
          signal: c.signal,
          onProgress: (p) => {
            if (p.phase !== phase) {
              phase = p.phase;
              // Paused, not stopped: the mappings phase draws it again (stopped here, check never drew one: an outside test).
              bar.pause();
              if (text) print(PHASES[p.phase] + '\n');
            }
            if (p.phase === 'mappings') bar.update(p.done, p.total);
          },
        });
        // A verdict on a live pool's snapshot stands only if it is still held (released meanwhile: ESTALE).
        await c.checkInputs();
      } catch (caught) {
        // Damage read in a snapshot something released meanwhile is that release, not a verdict.
        const e = opened ? await c.explain(caught) : caught;
        // Metadata too broken to open is a verdict, not a failure to run. So is any
        // other reason it cannot be opened (no such file, no snapshot held) for -q,
        // which prints nothing (as thin_check -q), and --json, whose report says so;
        // the text form gives the error's own line.
        const cannotOpen = !opened && (o.quiet || o.json) && e instanceof DmthinError && !(e instanceof UsageError) && !(e instanceof AbortError);
        if (!(e instanceof MetadataError) && !cannotOpen) throw e;
        if (!(e instanceof MetadataError)) openError = e as DmthinError;
        report = thinCheck().openFailureReport(e as DmthinError);
        why = 'the metadata could not be opened';
        opened = false;
      } finally {
        bar.stop();
      }
      const failed = thinCheck().reportFails(report, o.ignoreNonFatalErrors);
      // -q prints no text; --json's report is asked for explicitly, so it stays (as with every command's -q --json).
      const read = opened ? (o.superBlockOnly ? 'superblock' : o.skipMappings ? 'no-mappings' : 'all') : 'nothing';
      if (o.json) await writeStdout(toJson(reportJson(report, read)) + '\n');
      else if (!o.quiet) await writeStdout(report.problems.map((p) => problemLine(p) + '\n').join('') + summary(report, why, read));
      if (failed) {
        c.exitStatus = 1;
        // The --json report says it too; the line is the one the text form prints, with the error's own code.
        if (!o.quiet && openError) printErr(errorLine('dmthin check', openError) + '\n');
        else if (!o.quiet) {
          const what = report.fatal > 0 ? `${report.fatal} fatal problem${report.fatal === 1 ? '' : 's'}` : `${report.nonFatal} non-fatal problem${report.nonFatal === 1 ? '' : 's'}`;
          printErr(`dmthin check: ${metadata}: ${what} found [EUCLEAN]\n`);
        }
      }
    });
}
