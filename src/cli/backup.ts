/**
 * `dmthin backup`: a thin snapshot into a backup repository (docs/repository.md),
 * from a live pool or offline images; incremental against the volume's newest
 * backup whose snapshot is still in the pool.
 */
import type { Command } from 'commander';
import { UsageError } from '../errors';
import type { BackupOptions } from '../ops/backup';
import type { ThinPool as ThinPoolT } from '../pool/thin-pool';
import { CliContext, printErr, cliWording, plural, parseIntArg } from './common';
import { backupSourceJson, toJson } from './json';
import { isThinIdText, snapOption, thinIdArg, type MetadataSnapOpts } from './metadata-source';
import { Progress, stderrIsTTY } from './progress';
import { keyOption, keySource, type KeyCliOpts } from './repo-options';
import { parseSize } from './send';
import { COMMAND_LIST } from './commands';

interface BackupCliOpts extends MetadataSnapOpts, KeyCliOpts {
  pool?: string;
  metadata?: string;
  data?: string;
  snap: string;
  size?: string;
  repo: string;
  volume: string;
  poolId?: string;
  full?: boolean;
  tmpDir?: string;
  json?: boolean;
  quiet?: boolean;
}

export function register(program: Command, ctx: () => CliContext): void {
  const cmd = program
    .command('backup')
    .description(COMMAND_LIST.backup.description)
    .option('--pool <name>', 'a live thin-pool: dm name, VG/LV (LVM) or device node (needs root and device-mapper)')
    .option('--metadata <file>', 'offline: metadata device or image (instead of --pool)')
    .option('-m, --metadata-snap', 'offline: read through the held metadata snapshot (-mBLOCK: must be the held root)')
    .option('--data <file>', 'offline: the pool data device or its image')
    .requiredOption('--snap <id>', 'the snapshot: thin id (0..16777215), or with an LVM --pool an LV name (VG/LV or LV)')
    .option('--size <size>', "the thin device's size in bytes (or with a K, M, G, T, P suffix, or s for sectors); required offline and for an inactive device")
    .requiredOption('--repo <repo>', 'the repository: a directory, or s3://BUCKET/PREFIX')
    .requiredOption('--volume <name>', 'the volume name in the repository (A-Z a-z 0-9 . _ -, up to 128)')
    .option('--pool-id <id>', "pool identity recorded in the backup (default: dm uuid or name; offline: superblock uuid, else a digest of the device's mapping root)")
    .option('--full', 'read every mapped block, whatever earlier backups exist (chunks the repository has are still not uploaded)')
    .option('--tmp-dir <dir>', 'with --pool: where a large list of blocks to read is spilled (default TMPDIR); an offline backup keeps none');
  keyOption(cmd)
    .option('--json', 'print a summary as JSON when done')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: BackupCliOpts) => {
      const c = ctx();
      if (isThinIdText(o.snap)) parseIntArg('--snap', o.snap, 2 ** 24 - 1);
      const deviceSize = o.size === undefined ? undefined : parseSize('--size', o.size);
      if ((o.pool === undefined) === (o.metadata === undefined)) throw new UsageError('give --pool (a live pool) or --metadata (offline images), not both');
      let pool: ThinPoolT | undefined;
      if (o.pool !== undefined && !isThinIdText(o.snap)) {
        pool = await (require('../pool/thin-pool') as { ThinPool: typeof ThinPoolT }).ThinPool.open(o.pool);
      }
      const snap = await thinIdArg('--snap', o.snap, pool);
      const bar = new Progress('backup', !o.quiet && stderrIsTTY());
      const common = {
        repo: o.repo,
        key: keySource(o),
        volume: o.volume,
        snap,
        deviceSize,
        poolId: o.poolId,
        full: o.full,
        signal: c.signal,
        onProgress: ((p) => {
          if (p.phase === 'data') bar.update(p.chunksRead, p.chunksToRead, 'chunks');
        }) as BackupOptions['onProgress'],
        // Before the bar starts (the backups are listed first): a line of its own.
        onWarning: (m: string) => void printErr(`dmthin backup: warning: ${m}\n`),
      };
      let opts: BackupOptions;
      if (o.pool !== undefined) {
        if (o.data !== undefined || o.metadataSnap || o.metadataSnapBlock !== undefined) throw new UsageError('--data and -m go with --metadata (offline images), not --pool');
        opts = { ...common, pool: pool ?? o.pool, tmpDir: o.tmpDir };
      } else {
        if (o.data === undefined) throw new UsageError('with --metadata give --data (the pool data device or its image)');
        opts = { ...common, metadata: o.metadata!, metadataSnap: snapOption(o), data: o.data };
      }
      const { backup } = require('../ops/backup') as typeof import('../ops/backup');
      try {
        const r = await backup(opts);
        bar.stop();
        c.done = `backup ${r.id} of ${r.volume} was committed`;
        if (o.json) process.stdout.write(toJson({ ...r, source: backupSourceJson(r.source) }) + '\n');
        else {
          process.stdout.write(
            `backup ${r.id} of ${r.volume}: ${plural(r.chunks, 'chunk')}, ${r.chunksNew} new (${plural(r.bytesUploaded, 'byte')} uploaded); ` +
              `read ${plural(r.chunksRead, 'chunk')}${r.base ? `, the rest from backup ${r.base}` : ''}\n`,
          );
        }
      } catch (e) {
        throw cliWording(e);
      } finally {
        bar.stop();
      }
    });
}
