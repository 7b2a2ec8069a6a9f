/**
 * `dmthin send`: a snapshot (full) or its changes since a base snapshot
 * (incremental) as a stream (docs/stream-format.md), from a live pool or from
 * offline images (a metadata file plus the pool's data device image or the
 * thin device's image).
 */
import type { Command } from 'commander';
import type { Writable } from 'node:stream';
import { UsageError } from '../errors';
import { SECTOR_SIZE } from '../units';
import type { SendOptions } from '../ops/send';
import { CliContext, cliWording, formatVersionArg, parseIntArg, stdout, writeStderrReport } from './common';
import { fdIsTTY, Progress, stderrIsTTY } from './progress';
import { isThinIdText, snapOption, thinIdArg, type MetadataSnapOpts } from './metadata-source';
import type { ThinPool as ThinPoolT } from '../pool/thin-pool';
import { toJson } from './json';
import { isStdoutPath, refuseStdoutOverInputs } from './output';
import { COMMAND_LIST } from './commands';

interface SendCliOpts extends MetadataSnapOpts {
  pool?: string;
  metadata?: string;
  data?: string;
  device?: string;
  snap: string;
  base?: string;
  output: string;
  size?: string;
  poolId?: string;
  tmpDir?: string;
  formatVersion?: string;
  quiet?: boolean;
  json?: boolean;
}

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, s: SECTOR_SIZE };

/** What parseSize accepts after the number; --help and the error say the same. */
const SIZE_SUFFIXES = 'a suffix K, M, G, T, P (binary: 1K = 1024; KiB, MiB... too; any case) or s (512-byte sectors)';

/**
 * Bytes from "1073741824", "1G", "512MiB", "2048s" (sectors). "KB"/"GB" are
 * refused: they mean 1000-based units to many, and a size must not be guessed.
 */
export function parseSize(name: string, v: string): number {
  const m = /^([0-9]+)(?:([kmgtp])(?:ib)?|(s))?$/i.exec(v);
  if (!m) throw new UsageError(`${name} must be bytes, or a number with ${SIZE_SUFFIXES}; got '${v}'`);
  const n = Number(m[1]) * UNITS[(m[2] ?? m[3] ?? '').toLowerCase()];
  if (!Number.isSafeInteger(n)) throw new UsageError(`${name} out of range: ${v} (at most 9007199254740991 bytes, 2^53-1, just under 8P)`);
  return n;
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('send')
    .description(COMMAND_LIST.send.description)
    .option('--pool <name>', 'a live thin-pool: dm name, VG/LV (LVM) or device node (needs root and device-mapper)')
    .option('--metadata <file>', 'offline: metadata device or image (instead of --pool)')
    .option('-m, --metadata-snap', 'offline: read through the held metadata snapshot (-mBLOCK: must be the held root)')
    .option('--data <file>', 'offline: the pool data device or its image (blocks read at their data block)')
    .option('--device <file>', 'offline: the thin device or its image (blocks read at their virtual block)')
    .requiredOption('--snap <id>', 'the snapshot to send: thin id (decimal, 0..16777215), or with an LVM --pool an LV name (VG/LV or LV; needs lvm2)')
    .option('--base <id>', 'the base snapshot (thin id or LV name, as --snap): send only what changed since it')
    .option('-o, --output <file>', "where the stream goes ('-' = stdout; a file is written through a temporary file renamed over it when complete)", '-')
    .option('--size <size>', `the thin device's size: bytes, or a number with ${SIZE_SUFFIXES} (default: an active device's size, or the --device image's; required otherwise)`)
    .option('--pool-id <id>', 'pool identity recorded in the stream, any text up to 1024 bytes (default: dm uuid or name; offline: superblock uuid, else a digest of the device\'s mapping root)')
    .option('--tmp-dir <dir>', 'with --pool: where a large extent list is spilled (default TMPDIR); an offline send keeps none')
    .option('--format-version <n>', 'stream format version to write: 4 (default; BLAKE3 digest on several cores, mapping-root digests in the header), or 3, 2 or 1 for a receiver that reads only those')
    .option('--json', 'print a summary as JSON on stderr when done')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: SendCliOpts) => {
      const c = ctx();
      // Thin ids are checked at once; LV names need the pool (resolved below).
      if (isThinIdText(o.snap)) parseIntArg('--snap', o.snap, 2 ** 24 - 1);
      if (o.base !== undefined && isThinIdText(o.base)) parseIntArg('--base', o.base, 2 ** 24 - 1);
      const deviceSize = o.size === undefined ? undefined : parseSize('--size', o.size);
      const formatVersion = formatVersionArg(o.formatVersion);
      if (o.pool === undefined && o.metadata === undefined) throw new UsageError('give --pool (a live pool) or --metadata (offline images): one of them is needed');
      if (o.pool !== undefined && o.metadata !== undefined) throw new UsageError('give --pool (a live pool) or --metadata (offline images), not both');
      if (isStdoutPath(o.output) && fdIsTTY(1)) throw new UsageError('refusing to write a binary stream to a terminal (redirect it, or use --output FILE)');
      if (o.output === '') throw new UsageError("-o needs a file name ('-' for stdout)");
      const bar = new Progress('send', !o.quiet && stderrIsTTY());
      const onProgress: SendOptions['onProgress'] = (p) =>
        p.phase === 'data' ? bar.update(p.dataBlocks, p.totalDataBlocks, 'blocks') : bar.update(p.dataBlocks, undefined, 'blocks scanned');
      // stdout through the CLI's FdWriter (a Writable as far as send uses one: write with a callback, 'error').
      const output = isStdoutPath(o.output) ? (stdout() as unknown as Writable) : o.output;
      const inputs = [
        { path: o.metadata, role: 'the metadata input (--metadata)' },
        { path: o.data, role: 'the data input (--data)' },
        { path: o.device, role: 'the thin device input (--device)' },
      ];
      if (typeof output === 'string') {
        // Refused before the metadata walk (stream() checks again before opening it).
        const { refuseOutputOverInputs } = require('../output/file') as typeof import('../output/file');
        await refuseOutputOverInputs(output, 'the stream output', inputs);
      } else refuseStdoutOverInputs(inputs);
      let pool: ThinPoolT | undefined;
      if (o.pool !== undefined && (!isThinIdText(o.snap) || (o.base !== undefined && !isThinIdText(o.base)))) {
        pool = await (require('../pool/thin-pool') as { ThinPool: typeof ThinPoolT }).ThinPool.open(o.pool);
      }
      const snap = await thinIdArg('--snap', o.snap, pool);
      const base = o.base === undefined ? undefined : await thinIdArg('--base', o.base, pool);
      const common = { snap, base, deviceSize, poolId: o.poolId, output, signal: c.signal, onProgress, formatVersion };
      let opts: SendOptions;
      if (o.pool !== undefined) {
        if (o.data !== undefined || o.device !== undefined || o.metadataSnap || o.metadataSnapBlock !== undefined) {
          throw new UsageError('--data, --device and -m go with --metadata (offline images), not --pool');
        }
        opts = { ...common, pool: pool ?? o.pool, tmpDir: o.tmpDir };
      } else {
        if (o.data !== undefined && o.device !== undefined) throw new UsageError('with --metadata give --data (pool data device) or --device (thin device), not both');
        if (o.data === undefined && o.device === undefined) throw new UsageError('with --metadata give --data (pool data device) or --device (thin device): one of them is needed');
        opts = { ...common, metadata: o.metadata!, metadataSnap: snapOption(o), data: o.data, device: o.device };
      }
      const { send } = require('../ops/send') as typeof import('../ops/send');
      try {
        const s = await send(opts);
        // The bar goes first: the JSON shares its terminal (stderr), and a bar stopped after it is redrawn below it.
        bar.stop();
        if (o.json) {
          c.done = `the stream was written to ${typeof output === 'string' ? output : 'stdout'}`;
          writeStderrReport(toJson(s) + '\n');
        }
      } catch (e) {
        // The library names its option; a command-line user needs the flag.
        throw cliWording(e);
      } finally {
        bar.stop();
      }
    });
}
