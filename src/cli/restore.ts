/**
 * `dmthin restore`: any backup of a repository onto a block device or file,
 * every chunk verified before it is written.
 */
import type { Command } from 'commander';
import { UsageError } from '../errors';
import type { ZeroMethod } from '../stream/receive/target';
import { CliContext, cliWording, plural, print } from './common';
import { toJson } from './json';
import { Progress, stderrIsTTY } from './progress';
import { keyOption, keySource, type KeyCliOpts } from './repo-options';
import { COMMAND_LIST } from './commands';

interface RestoreCliOpts extends KeyCliOpts {
  repo: string;
  backup: string;
  target: string;
  create?: boolean;
  full?: boolean;
  state?: string;
  discard: string;
  json?: boolean;
  quiet?: boolean;
}

const ZERO_METHODS: ZeroMethod[] = ['auto', 'discard', 'zeroout', 'punch'];

export function register(program: Command, ctx: () => CliContext): void {
  const cmd = program
    .command('restore')
    .description(COMMAND_LIST.restore.description)
    .requiredOption('--repo <repo>', 'the repository: a directory, or s3://BUCKET/PREFIX')
    .requiredOption('--backup <id>', "the backup's id (see `dmthin backups list`)")
    .requiredOption('--target <path>', 'block device or regular file to write')
    .option('--create', "create a regular-file target if missing, or grow one smaller than the backup's device")
    .option('--full', 'write every chunk, whatever the restore state says the target holds')
    .option('--state <file>', 'restore state file (default: <target>.dmthin-restore.json beside the file, symlinks followed; for a device /var/lib/dmthin/restore/, by its dm uuid)')
    .option('--discard <method>', `how holes are zeroed: ${ZERO_METHODS.join(', ')}`, 'auto');
  keyOption(cmd)
    .option('--json', 'print a summary as JSON when done')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: RestoreCliOpts) => {
      const c = ctx();
      if (!ZERO_METHODS.includes(o.discard as ZeroMethod)) throw new UsageError(`unknown --discard method '${o.discard}' (${ZERO_METHODS.join(', ')})`);
      if (o.state !== undefined) {
        const { refuseOutputOverInputs } = require('../output/file') as typeof import('../output/file');
        await refuseOutputOverInputs(o.state, 'the state file (--state)', [{ path: o.target, role: 'the target (--target)' }]);
      }
      const bar = new Progress('restore', !o.quiet && stderrIsTTY());
      const { restore } = require('../ops/restore') as typeof import('../ops/restore');
      try {
        const r = await restore({
          repo: o.repo,
          key: keySource(o),
          backup: o.backup,
          target: o.target,
          create: o.create,
          full: o.full,
          stateFile: o.state,
          zero: o.discard as ZeroMethod,
          signal: c.signal,
          onProgress: (p) => bar.update(p.chunks, p.totalChunks, 'chunks'),
        });
        bar.stop();
        c.done = `backup ${r.backup} was restored onto ${r.target}`;
        if (o.json) print(toJson(r) + '\n');
        else {
          print(
            `restored backup ${r.backup} of ${r.volume} onto ${r.target}: ${plural(r.chunksWritten, 'chunk')} written, ${r.chunksZeroed} zeroed, ${r.chunksUnchanged} unchanged` +
              `${r.previous ? ` (it held backup ${r.previous})` : ''}\n`,
          );
        }
      } catch (e) {
        throw cliWording(e);
      } finally {
        bar.stop();
      }
    });
}
