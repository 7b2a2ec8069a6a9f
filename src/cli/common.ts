/**
 * Shared CLI plumbing: argument helpers, the error line, exit codes,
 * cancellation on SIGINT/SIGTERM and TTY-only progress bars.
 */
import type { Command } from 'commander';
import { writeSync } from 'node:fs';
import { AbortError, DmthinError, SystemCallError, UsageError, whilePending } from '../errors';
import { FdWriter } from '../output/fd-writer';
import { outputError } from '../output/sink';

/** Exit status on any error, as the reference tools do. */
export const EXIT_FAILURE = 1;

/**
 * Exit status when the reader of stdout went away (EPIPE, e.g. `| head -1`):
 * 128 + SIGPIPE, what a shell reports for the reference tools, which die of
 * SIGPIPE there. Nothing is printed on stderr.
 */
export const EXIT_EPIPE = 141;

let stdoutError: Error | undefined;
let stdoutGuarded = false;
/** process.stdout was created (some command streams through it: send). */
let nodeStdoutMade = false;
let fdStdout: FdWriter | undefined;

/**
 * The CLI's stdout for text and formatted output: ordered writes to
 * descriptor 1 without process.stdout, whose creation loads net and the
 * stream modules (~6 ms of a run; see output/fd-writer.ts). Its errors are
 * kept and thrown by finishStdout(). A command writes stdout through this or
 * through process.stdout (send's binary stream), never both.
 */
export function stdout(): FdWriter {
  return (fdStdout ??= new FdWriter(1));
}

/** Writes text to stdout (stdout()); a failure is reported by finishStdout(). */
export function print(text: string): void {
  stdout().write(text);
}

/**
 * Makes every write error of stdout visible, for every command. Node writes
 * a pipe asynchronously (errors arrive as 'error' events, here recorded
 * instead of crashing the process) and a file or character device
 * synchronously through a stream that drops the rest of a short write (a full
 * disk loses data without an error): that stream's write is replaced by one
 * that continues short writes and reports the failure. process.stdout is
 * guarded when first read, not created here (start-up: see stdout()).
 * stderr's write errors are made harmless too (process.stderr, should
 * anything create it: commander's help, a progress bar on a terminal that
 * hangs up).
 */
export function guardStdio(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  // stderr's write errors are harmless: see printErr.
  whenMade('stderr', (s) => s.on('error', () => (stderrGone = true)));
  whenMade('stdout', guardNodeStdout);
}

/**
 * Runs `guard` on process[name] when Node makes it (its getter creates the
 * stream on first read, which loads net and the stream modules: start-up),
 * or now where Node made it already.
 */
function whenMade(name: 'stdout' | 'stderr', guard: (s: NodeJS.WriteStream) => void): void {
  const desc = Object.getOwnPropertyDescriptor(process, name);
  if (!desc?.get || !desc.configurable) {
    guard(process[name]);
    return;
  }
  const make = desc.get;
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: desc.enumerable,
    get() {
      const s = make.call(process) as NodeJS.WriteStream;
      Object.defineProperty(process, name, { configurable: true, enumerable: desc.enumerable, writable: false, value: s });
      guard(s);
      return s;
    },
  });
}

/**
 * Set once a write to stderr failed: stderr is gone (a terminal closed after
 * SIGHUP, a reader that exited), and nothing more is written to it.
 */
let stderrGone = false;

/**
 * Writes `text` to stderr (the error line, warnings, notes): synchronously,
 * and never failing. With stderr gone nobody can be told, and the exit status
 * still says what happened. Through process.stderr such a write raised an
 * 'error' event that nothing handled: the process ended with 1 before its
 * cleanups ran (after SIGINT with stderr closed, dump -o left its temporary
 * file and exited 1, not 130).
 */
export function printErr(text: string): void {
  if (stderrGone) return;
  try {
    writeAllSync(2, Buffer.from(text), 'stderr');
  } catch {
    stderrGone = true;
  }
}

function guardNodeStdout(s: NodeJS.WriteStream): void {
  nodeStdoutMade = true;
  const out = s as NodeJS.WriteStream & { fd?: number; _write?: unknown; _handle?: unknown };
  out.on('error', (e) => (stdoutError ??= e));
  if (out.constructor.name === 'SyncWriteStream' && typeof out.fd === 'number' && !out._handle) {
    const fd = out.fd;
    out._write = (chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void => {
      try {
        writeAllSync(fd, chunk, 'stdout');
      } catch (e) {
        cb(e as Error);
        return;
      }
      cb();
    };
  }
}

/**
 * Waits until everything written to stdout (stdout() and process.stdout) has
 * left the process and throws the first write error (as a DmthinError; EPIPE
 * keeps its code). `signal` ends a wait for bytes still pending (a reader
 * that stopped reading) with AbortError; output that has left by then is
 * complete, whenever the signal came.
 */
export async function finishStdout(signal?: AbortSignal): Promise<void> {
  if (fdStdout) await whilePending(fdStdout.flushed().catch((e: Error) => (stdoutError ??= e)), signal);
  if (nodeStdoutMade && !stdoutError && !process.stdout.destroyed) {
    await whilePending(
      new Promise<void>((resolve) =>
        process.stdout.write('', (e) => {
          if (e) stdoutError ??= e;
          resolve();
        }),
      ),
      signal,
    );
  }
  if (stdoutError) throw outputError(stdoutError, 'stdout');
}

/**
 * Commander's collector of a repeatable option's values: appends in place
 * (a copy per value, [...acc, v], made 40,000 --region values take 13 s).
 */
export function collect(v: string, acc: string[] = []): string[] {
  acc.push(v);
  return acc;
}

/**
 * Writes a command's report to stderr (send --json: its stdout is the
 * stream) and throws when it could not be written whole: the report is part
 * of the promise of exit status 0. Synchronous, short writes continued; a
 * descriptor its parent left non-blocking is waited on.
 */
export function writeStderrReport(text: string): void {
  try {
    writeAllSync(2, Buffer.from(text), 'stderr');
  } catch (e) {
    throw outputError(e, 'stderr');
  }
}

/**
 * Writes all of `buf` to `fd` synchronously: short writes are continued, a
 * descriptor its parent left non-blocking (EAGAIN) is waited on, a write
 * that makes no progress is EIO.
 */
function writeAllSync(fd: number, buf: Uint8Array, name: string): void {
  for (let off = 0; off < buf.length; ) {
    let n: number;
    try {
      n = writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
      continue;
    }
    if (n <= 0) throw new SystemCallError('EIO', `write to ${name} made no progress`, { syscall: 'write' });
    off += n;
  }
}

/**
 * What a command stopped by SIGINT/SIGTERM reports: "interrupted", and what
 * its work left behind when the abort says so (restore: "; target T is
 * incomplete ...: restore a backup onto it again").
 */
export function interruptedError(e: unknown): AbortError {
  const m = e instanceof AbortError ? e.message : '';
  const i = m.indexOf('; ');
  return new AbortError(i >= 0 ? `interrupted${m.slice(i)}` : 'interrupted');
}

/** A closed pipe (the reader went away): the command ends quietly. */
export function isEpipe(e: unknown): boolean {
  return (e as { code?: string } | undefined)?.code === 'EPIPE';
}

/** An input that may change under the command (a metadata snapshot): CliContext.onInputCheck. */
export interface InputCheck {
  /** Rejects with MetadataSnapError ESTALE when it changed. */
  verify(): Promise<void>;
}

export class CliContext {
  readonly controller = new AbortController();
  private readonly cleanups: (() => Promise<void> | void)[] = [];
  private signalled: NodeJS.Signals | undefined;
  /** Exit status of a command that completed but has a verdict to give (check: problems found). */
  exitStatus = 0;
  /**
   * What a command has done for good before printing its report (`backup X
   * was committed`): a failed stdout then says the work stands and only the
   * report was lost, so nobody runs it again believing it failed.
   */
  done: string | undefined;

  constructor(readonly command: string) {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.on(sig, () => this.onSignal(sig));
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** What the command read that may change under it: see onInputCheck. */
  private readonly inputs: InputCheck[] = [];
  /** checkInputs() passed after the last read. */
  private inputsVerified = false;

  /**
   * Registers a check that an input is still what the command opened (a
   * live pool's metadata snapshot, still held: LiveMetadata.verify): run by
   * checkInputs() before a command's output is committed, and by explain()
   * on its failure (staleOr: its ESTALE in place of what it explains).
   */
  onInputCheck(c: InputCheck): void {
    this.inputs.push(c);
  }

  /** Whether an input check is registered. */
  checksInputs(): boolean {
    return this.inputs.length > 0;
  }

  /**
   * Throws when an input changed under the command (then nothing it read
   * from it stands). Called once the command has read all it reads: once
   * it has passed, later calls pass at once (rmap checks before its sort and
   * its commit checks again; a release after the last read changes nothing
   * that was read).
   */
  async checkInputs(): Promise<void> {
    if (this.inputsVerified) return;
    for (const c of this.inputs) await c.verify();
    this.inputsVerified = true;
  }

  /** The error to report for `e`: an input's own (ESTALE) when it changed under the command, which explains `e`. */
  async explain(e: unknown): Promise<unknown> {
    if (this.inputs.length === 0) return e;
    // Loaded only with an input to check (the reader is loaded then already).
    const { staleOr } = require('../thin/metadata') as typeof import('../thin/metadata');
    for (const c of this.inputs) e = await staleOr(c, e);
    return e;
  }

  /** Runs at exit, success or failure, also after Ctrl-C / SIGTERM (e.g. release a metadata snapshot). */
  onCleanup(fn: () => Promise<void> | void): void {
    this.cleanups.unshift(fn);
  }

  private onSignal(sig: NodeJS.Signals): void {
    if (this.signalled) return; // second signal: cleanups are already running
    this.signalled = sig;
    this.controller.abort(new DmthinError('ABORT_ERR', `interrupted by ${sig}`));
  }

  async runCleanups(): Promise<void> {
    const fns = this.cleanups.splice(0);
    for (const fn of fns) {
      try {
        await fn();
      } catch (e) {
        printErr(errorLine(this.command, e, 'cleanup failed: ') + '\n');
      }
    }
  }

  /** Exit status for a thrown error (128+n after a signal, like a shell). */
  exitCodeFor(): number {
    if (this.signalled) return 128 + (this.signalled === 'SIGINT' ? 2 : this.signalled === 'SIGTERM' ? 15 : 1);
    return EXIT_FAILURE;
  }

  wasSignalled(): boolean {
    return this.signalled !== undefined;
  }
}

/**
 * One line on stderr: "dmthin dump: <message> [CODE]", for every error the
 * CLI reports (ours, Node's, the parser's). An error without a code (a bug,
 * or a plain Error from a dependency) is [EUNKNOWN]; a message that starts
 * with its code (Node's "ENOENT: no such file...") has it moved to the end.
 */
export function errorLine(command: string, err: unknown, prefix = ''): string {
  // An error whose `await using` clean-up failed too arrives as a SuppressedError (TypeScript's
  // helper makes one on Node 20): the first error is the news, the clean-up's follow it.
  const later: unknown[] = [];
  let first = err;
  while (isSuppressedError(first)) {
    later.unshift(first.error);
    first = first.suppressed;
  }
  const e = first as { code?: unknown } | undefined;
  const code = typeof e?.code === 'string' && e.code !== '' ? e.code : 'EUNKNOWN';
  // Node's own messages start with their code ("ENOSPC: No space left on device, write"):
  // it goes to the end, as on every other line.
  let message = messageOf(first) + later.map((x) => `; cleaning up failed too: ${messageOf(x)}`).join('');
  if (message.startsWith(`${code}: `)) message = message.slice(code.length + 2).replace(/^[A-Z](?=[a-z])/, (c) => c.toLowerCase());
  return `${command}: ${prefix}${message} [${code}]`;
}

function messageOf(err: unknown): string {
  const e = err as { message?: unknown } | undefined;
  return (err instanceof Error || typeof e?.message === 'string' ? String(e!.message) : String(err)).replace(/\s*\n\s*/g, ' ').trim();
}

function isSuppressedError(err: unknown): err is { error: unknown; suppressed: unknown } {
  return err instanceof Error && err.name === 'SuppressedError' && 'suppressed' in err && 'error' in err;
}

/** Library options named in a message become the flags a command-line user types. */
export function cliWording(e: unknown): unknown {
  if (e instanceof DmthinError) {
    e.message = e.message
      .replace(/\(option deviceSize\)/g, '(--size BYTES)')
      .replace(/option deviceSize/g, '--size BYTES')
      .replace(/\(option full\)/g, '(--full)')
      .replace(/\(option create makes a file target\)/g, '(--create makes a file target)')
      .replace(/option create grows the file/g, '--create grows the file');
  }
  return e;
}

/** `n` and `noun` ("1 chunk", "2 chunks"): counts in the CLI's lines agree with their number. */
export function plural(n: number | bigint, noun: string): string {
  return `${n} ${noun}${n === 1 || n === 1n ? '' : 's'}`;
}

/** --format-version: a version this build writes (records.ts is loaded only by a send that runs, not by --help). */
export function formatVersionArg(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const { FORMAT_VERSIONS } = require('../stream/format/records') as typeof import('../stream/format/records');
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!FORMAT_VERSIONS.includes(n)) throw new UsageError(`--format-version must be one of ${FORMAT_VERSIONS.join(', ')}; got '${v}'`);
  return n;
}

export function parseIntArg(name: string, v: string, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^[0-9]+$/.test(v)) throw new UsageError(`${name} must be a non-negative integer, got '${v}'`);
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n > max) throw new UsageError(`${name} out of range: ${v}`);
  return n;
}


/**
 * Commands whose reference tool takes -m as a flag only: thin_check has no
 * block (-mq is -m -q), thin_ls ignores what is attached. Here -m with digits
 * attached is still the block, anything else attached is more short flags
 * (-mq as -qm), as commander splits them.
 */
const METADATA_SNAP_FLAG_FIRST = new Set(['check', 'ls']);

/** The commands that stand for a thin_* 0.9.0 tool, whose getopt_long takes any unambiguous prefix of a long option. */
const GETOPT_COMMANDS = new Set(['dump', 'ls', 'delta', 'rmap', 'check']);

/**
 * `--skip` for `--skip-mappings`, `--dev=1` for `--dev-id=1`, `--vers` for
 * `--version`: a long option given by a prefix that names exactly one of the
 * command's options is written out, as getopt_long reads it (an exact name
 * wins). Only for the commands of GETOPT_COMMANDS, so scripts written for the
 * reference tools run. A prefix of more than one option is refused naming
 * them (getopt_long: "is ambiguous"); for the other commands, a prefix of
 * options is refused naming what it begins, where the parser would have
 * guessed by spelling (`send --meta`: "did you mean --data?"). On the
 * getopt commands, a token in option position that looks like a negative
 * number (`check -1 X`) and is no option is refused as an unknown option, as
 * getopt does: the parser took it for an argument and said only "too many
 * arguments".
 */
export function expandLongOptionPrefixes(argv: string[], cmd: Command | undefined): string[] {
  if (cmd === undefined) return argv;
  if (cmd.commands.length > 0) {
    // A command group (backups, pool): its subcommand's options, the group's name kept in front.
    const sub = cmd.commands.find((c) => c.name() === argv[1]);
    return sub ? [argv[0], ...expandOptions(argv.slice(1), sub, `${cmd.name()} ${sub.name()}`)] : argv;
  }
  return expandOptions(argv, cmd, cmd.name());
}

function expandOptions(argv: string[], cmd: Command, path: string): string[] {
  if (cmd.commands.length > 0) return argv;
  // Both names of an option with two long ones ('--snap1, --thin1': commander keeps the first as its short name).
  const longs = cmd.options.filter((o) => !o.hidden).flatMap((o) => [o.short, o.long].filter((f): f is string => f?.startsWith('--') === true));
  longs.push('--help', '--version');
  const getopt = GETOPT_COMMANDS.has(cmd.name());
  const refuse = (what: string): never => {
    throw new UsageError(`${what}; see 'dmthin ${path} --help'`);
  };
  return mapOptionTokens(argv, cmd, (a) => {
    // getopt reads -hV as -h -V, and -h prints the usage whatever follows.
    if (getopt && /^-h[A-Za-z]+$/.test(a)) return '--help';
    // Only where getopt reads the command line: other commands take negative numbers as words (message's).
    if (getopt && /^-[0-9]/.test(a) && valueOf(cmd, a) === undefined && !cmd.options.some((o) => o.short === a)) refuse(`unknown option '${a}'`);
    const m = /^(--[^=]+)(=.*)?$/.exec(a);
    if (!m || longs.includes(m[1])) return a;
    const hits = longs.filter((l) => l.startsWith(m[1]));
    if (hits.length === 0) return a;
    if (getopt && hits.length === 1) return hits[0] + (m[2] ?? '');
    const choices = hits.length === 1 ? hits[0] : `${hits.slice(0, -1).join(', ')} or ${hits[hits.length - 1]}`;
    return refuse(getopt ? `option '${m[1]}' is ambiguous: ${hits.join(', ')}` : `unknown option '${m[1]}' (did you mean ${choices}?)`);
  });
}

/**
 * The reference tools take the metadata-snapshot block only attached
 * ("-m5", "--metadata-snap=5"); "-m 5" means the path "5". Commander's optional
 * values would swallow the path, so rewrite the attached forms first, for the
 * command `argv[0]` names (`cmd`, registered) and only if it has -m. Only a
 * token in option position is rewritten: not after "--", not the value of an
 * option that takes one ("-o -mout.xml" is the file "-mout.xml"). Which
 * options take a value comes from the command's own options, read as
 * commander reads them (Command.parseOptions).
 */
export function rewriteMetadataSnapArgs(argv: string[], cmd: Command | undefined): string[] {
  if (cmd === undefined || !cmd.options.some((o) => o.long === '--metadata-snap')) return argv;
  const flagFirst = METADATA_SNAP_FLAG_FIRST.has(cmd.name());
  return mapOptionTokens(argv, cmd, (a) => {
    const m = /^--metadata-snap=(.*)$/.exec(a) ?? (flagFirst ? null : /^-m(.+)$/.exec(a));
    if (m) return ['--metadata-snap-block', m[1]];
    // Flag-first commands: digits attached are the block, and letters after them more short flags
    // ("-m8q" is -m8 -q; an outside test: it was "unknown option '-8q'").
    const f = flagFirst ? /^-m([0-9]+)([A-Za-z].*)?$/.exec(a) : null;
    if (f) return f[2] ? ['--metadata-snap-block', f[1], `-${f[2]}`] : ['--metadata-snap-block', f[1]];
    return a;
  });
}

/**
 * argv (argv[0] the command) with each token in option position replaced by
 * what `map` gives: a token (whose value, when the option it names takes
 * one, is the next argument, kept as it is) or a complete list of tokens.
 * Option values and everything after "--" are left alone.
 */
function mapOptionTokens(argv: string[], cmd: Command, map: (token: string) => string | string[]): string[] {
  const out = argv.slice(0, 1);
  for (let i = 1; i < argv.length; i++) {
    if (argv[i] === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const a = map(argv[i]);
    if (Array.isArray(a)) {
      out.push(...a);
      continue;
    }
    out.push(a);
    const value = valueOf(cmd, a);
    // An optional value is taken only if it does not look like an option (commander's rule).
    if (i + 1 < argv.length && (value === 'required' || (value === 'optional' && !/^-./.test(argv[i + 1])))) out.push(argv[++i]);
  }
  return out;
}

/** Whether `arg` of `cmd` takes the next argument as its value, as commander reads it ("-o FILE", "-qo FILE"; not "--output=FILE", "-oFILE"). */
function valueOf(cmd: Command, arg: string): 'required' | 'optional' | undefined {
  const kind = (o: { required: boolean; optional: boolean } | undefined) => (o?.required ? 'required' : o?.optional ? 'optional' : undefined);
  const find = (flag: string) => cmd.options.find((o) => o.short === flag || o.long === flag);
  if (arg.length < 2 || arg[0] !== '-') return undefined;
  const whole = find(arg);
  if (whole || arg[1] === '-') return kind(whole);
  // A group of short options: flags until one that takes a value, which takes the rest of the group, or the next argument if none is left.
  for (let k = 1; k < arg.length; k++) {
    const o = find(`-${arg[k]}`);
    if (o === undefined) return undefined;
    if (kind(o)) return k === arg.length - 1 ? kind(o) : undefined;
  }
  return undefined;
}
