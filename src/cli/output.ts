/**
 * Where a command's output goes: stdout (common.ts's stdout(), whose errors
 * main() sees through finishStdout) or `-o FILE`, written through a temporary file that replaces
 * FILE only once complete and fsynced (output/file.ts). FILE must not
 * be one of the command's inputs.
 */
import { fstatSync, statSync } from 'node:fs';
import { UsageError } from '../errors';
import type { NamedInput } from '../output/file';
import type * as File from '../output/file';
import { outputError, type SinkTarget } from '../output/sink';
import { stdout, type CliContext } from './common';

/** The output-file module, loaded only for `-o FILE` (stdout needs none of it: start-up). */
const file = (): typeof File => require('../output/file') as typeof File;

/**
 * `-o` naming this process's own stdout (/dev/stdout, /dev/fd/1,
 * /proc/self/fd/1) is stdout itself: written where stdout stands, as the
 * shell set it up (a pipe, or a file at its offset), not reopened and
 * replaced by a temporary file.
 */
export function isStdoutPath(path: string | undefined): boolean {
  return path === '-' || path === '/dev/stdout' || path === '/dev/fd/1' || path === '/proc/self/fd/1' || path === `/proc/${process.pid}/fd/1`;
}

export interface CommandOutput {
  out: SinkTarget;
  /** Makes a file output complete and durable (nothing for stdout). */
  commit(): Promise<void>;
}

/**
 * Refuses an output that names an input (stat only: opens nothing). Commands
 * call it before opening their input, and open the output after it: opening
 * a FIFO blocks until its reader comes, which may wait for what the input
 * does first (e.g. a reader that starts once the metadata snapshot is held).
 */
export async function checkOutputPath(path: string | undefined, inputs: readonly NamedInput[]): Promise<void> {
  if (path === undefined || isStdoutPath(path)) return refuseStdoutOverInputs(inputs);
  if (path === '') throw new UsageError("-o needs a file name ('-' for stdout)");
  await file().refuseOutputOverInputs(path, 'the output file', inputs);
}

/**
 * Refuses a stdout that is one of the inputs (`dmthin dump img 1<>img`, or
 * `>> img`): the first output chunk would overwrite the metadata being read.
 * The same file (device and inode) or, for block devices, the same device.
 */
export function refuseStdoutOverInputs(inputs: readonly NamedInput[]): void {
  let out;
  try {
    out = fstatSync(1);
  } catch {
    return; // no stdout: nothing is written anywhere
  }
  if (!out.isFile() && !out.isBlockDevice()) return;
  for (const i of inputs) {
    if (i.path === undefined) continue;
    let st;
    try {
      st = statSync(i.path, { throwIfNoEntry: false });
    } catch {
      continue; // a path that cannot be followed (a symlink loop, no search permission): its open says so
    }
    if (!st) continue;
    const same = out.isBlockDevice() ? st.isBlockDevice() && st.rdev === out.rdev : st.dev === out.dev && st.ino === out.ino;
    if (same) throw new UsageError(`stdout is ${i.role} ${i.path}: writing there would destroy it; send stdout elsewhere`, { path: i.path });
  }
}

export async function commandOutput(path: string | undefined, c: CliContext, inputs: readonly NamedInput[]): Promise<CommandOutput> {
  // Before a commit, the inputs are checked: what was read from a live pool's snapshot stands only if it is still held.
  if (path === undefined || isStdoutPath(path)) {
    if (!c.checksInputs()) return { out: stdout(), commit: async () => undefined };
    // Printed as it is made, but its last chunk only once the inputs pass: if they fail, stdout
    // ends cut short (no closing tags), not a whole document beside exit 1.
    const { HeldTail } = require('../output/held-tail') as typeof import('../output/held-tail');
    const t = new HeldTail(stdout(), c.signal);
    return {
      out: t,
      commit: async () => {
        await c.checkInputs();
        await t.release();
      },
    };
  }
  const { OutputFile, refuseOutputOverInputs } = file();
  await refuseOutputOverInputs(path, 'the output file', inputs);
  const f = await OutputFile.create(path, { signal: c.signal });
  // Failure, Ctrl-C or SIGTERM: the temporary file goes, FILE stays as it was.
  c.onCleanup(() => f.discard());
  return {
    out: f.stream,
    commit: async () => {
      await c.checkInputs();
      await f.commit();
    },
  };
}

/** Writes text (or bytes) to stdout and waits for it; a write error is the one "cannot write stdout" error. */
export function writeStdout(text: string | Uint8Array): Promise<void> {
  return new Promise<void>((resolve, reject) => stdout().write(text, (e) => (e ? reject(outputError(e, 'stdout')) : resolve())));
}
