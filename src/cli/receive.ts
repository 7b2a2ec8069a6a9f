/**
 * `dmthin receive`: verify a stream completely, then apply it to a block
 * device or file and record what the target now holds.
 */
import { fstatSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { DmthinError, isSystemError, UsageError } from '../errors';
import type { ZeroMethod } from '../stream/receive/target';
import { CliContext } from './common';
import { toJson } from './json';
import { fdIsTTY, Progress, stderrIsTTY } from './progress';
import { COMMAND_LIST } from './commands';

interface ReceiveCliOpts {
  target: string;
  input: string;
  state?: string;
  force?: boolean;
  resized?: boolean;
  create?: boolean;
  spoolDir?: string;
  discard: string;
  json?: boolean;
  quiet?: boolean;
}

const ZERO_METHODS: ZeroMethod[] = ['auto', 'discard', 'zeroout', 'punch'];

/**
 * The stream file (--input) is looked at before anything else: a missing
 * file or a directory said so in Node's words ("illegal operation on a
 * directory, read"), without the option or, for a directory, the path.
 */
async function checkInputFile(path: string): Promise<void> {
  const { stat } = require('node:fs/promises') as typeof import('node:fs/promises');
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    if (isSystemError(e) && e.code === 'ENOENT') {
      throw new DmthinError('ENOENT', `--input ${path}: no such file; give the stream file dmthin send wrote, or '-' to read it from stdin`, { path });
    }
    return; // anything else (EACCES...) is reported by the open, with the path
  }
  if (st.isDirectory()) throw new DmthinError('EISDIR', `--input ${path} is a directory; give the stream file dmthin send wrote, or '-' to read it from stdin`, { path });
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('receive')
    .description(COMMAND_LIST.receive.description)
    .requiredOption('--target <path>', 'block device or regular file to write')
    .option('-i, --input <file>', "the stream ('-' = stdin; a regular file is verified in place)", '-')
    .option('--state <file>', 'receive state file (default: <target>.dmthin-state.json beside the file, symlinks followed; for a device /var/lib/dmthin/receive/, by its dm uuid)')
    .option('--force', "apply an incremental stream even if the target is not recorded as holding its base")
    .option('--resized', 'the volume was resized since the base was received: accept an incremental stream of another size (a grown tail is zeroed first)')
    .option('--create', 'create a regular-file target if missing, or grow one smaller than the stream\'s device')
    .option('--spool-dir <dir>', 'where a piped stream is spooled for verification (default TMPDIR)')
    .option('--discard <method>', `how discarded ranges are zeroed: ${ZERO_METHODS.join(', ')}`, 'auto')
    .option('--json', 'print a summary as JSON when done')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: ReceiveCliOpts) => {
      const c = ctx();
      if (!ZERO_METHODS.includes(o.discard as ZeroMethod)) throw new UsageError(`unknown --discard method '${o.discard}' (${ZERO_METHODS.join(', ')})`);
      // fdIsTTY(0), not process.stdin.isTTY: that would make the stdin stream, which a piped stdin does without (pipe-chunks.ts).
      if (o.input === '-' && fdIsTTY(0)) throw new UsageError('refusing to read a stream from a terminal (pipe one in, or use --input FILE)');
      if (o.input !== '-') await checkInputFile(o.input);
      if (o.state !== undefined) {
        const { refuseOutputOverInputs } = require('../output/file') as typeof import('../output/file');
        await refuseOutputOverInputs(o.state, 'the state file (--state)', [
          { path: o.target, role: 'the target (--target)' },
          { path: o.input === '-' ? '/proc/self/fd/0' : o.input, role: 'the input stream (--input)' },
        ]);
      }
      const bar = new Progress('receive', !o.quiet && stderrIsTTY());
      const { receive, receivePipe } = require('../ops/receive') as typeof import('../ops/receive');
      const { openPipe } = require('../stream/receive/pipe-chunks') as typeof import('../stream/receive/pipe-chunks');
      try {
        // A pipe on stdin is read directly (large reused buffers, flat memory); anything else through receive().
        const pipe = o.input === '-' ? openPipe(0) : null;
        const opts = {
          target: o.target,
          stateFile: o.state,
          force: o.force,
          resized: o.resized,
          create: o.create,
          spoolDir: o.spoolDir,
          zero: o.discard as ZeroMethod,
          signal: c.signal,
          onProgress: (p: { phase: string; bytes: number; totalBytes?: number }) => bar.update(p.bytes, p.totalBytes, p.phase === 'verify' ? 'bytes verified' : 'bytes applied'),
        };
        const r = pipe !== null ? await receivePipe(pipe, opts) : await receive({ ...opts, input: o.input === '-' ? (stdinFileAtStart() ?? '-') : o.input });
        bar.stop();
        c.done = `the stream was applied to ${o.target} and recorded in ${r.stateFile}`;
        // One shape whatever the stream (docs/json.md): roots a stream of version 3 or older, or a full one, has not are null.
        if (o.json) process.stdout.write(toJson({ ...r, header: { ...r.header, targetRoot: r.header.targetRoot ?? null, baseRoot: r.header.baseRoot ?? null }, resizedFrom: r.resizedFrom ?? null }) + '\n');
      } catch (e) {
        // The library names its options; a command-line user needs the flags.
        if (e instanceof DmthinError) e.message = e.message.replace(/option (force|resized|create)\b/g, '--$1').replace(/\bspool dir\b/g, '--spool-dir');
        throw e;
      } finally {
        bar.stop();
      }
    });
}

/**
 * A regular file on stdin (`receive < FILE`), not yet read from: its path
 * through /proc, so that it is verified in place and applied from the same
 * descriptor as `-i FILE` is, not copied into the spool first (which a small
 * spool directory could not hold; outside hunt T). Only at offset 0, where
 * reading it anew from its start reads what stdin would.
 */
function stdinFileAtStart(): string | null {
  try {
    if (!fstatSync(0).isFile()) return null;
    const pos = /^pos:\s*(\d+)$/m.exec(readFileSync('/proc/self/fdinfo/0', 'utf8'));
    return pos !== null && pos[1] === '0' ? '/proc/self/fd/0' : null;
  } catch {
    return null;
  }
}
