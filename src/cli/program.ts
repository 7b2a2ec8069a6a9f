/**
 * The dmthin command line (main.ts starts it). Each subcommand lives in its
 * own file; this one wires them up and owns exit codes: 0 on success, 1 on
 * any error (one line on stderr), 128+n after a signal, 141 quietly when the
 * reader of stdout went away (EPIPE). Success is reported only once stdout has
 * taken every byte: a write error of any command (ENOSPC, EIO...) is an error
 * like any other.
 */
import { Command, CommanderError, Option } from 'commander';
import { AbortError, DmthinError, UsageError } from '../errors';
import { addonLoaded, armExitGuard, exitNow, tuneAllocatorOnLoad } from '../native/binding';
import { CliContext, printErr, errorLine, EXIT_EPIPE, EXIT_FAILURE, finishStdout, guardStdio, interruptedError, isEpipe, print, expandLongOptionPrefixes, rewriteMetadataSnapArgs } from './common';
import { OUTPUT_INCOMPLETE } from '../output/sink';
import { fdIsTTY } from './progress';
import { COMMAND_LIST, COMMANDS } from './commands';
import { noteActionRan } from './startup';

/** The package's version, read when asked for (-V): loading package.json took ~0.7 ms of every run. */
const packageVersion = (): string => (require('../../package.json') as { version: string }).version;

/**
 * malloc thresholds of a CLI process (native/allocator.cc): chunks below 1
 * MiB come from the heap, not an mmap each, and up to 8 MiB freed at its top
 * stays for reuse. A walk's churn of compiler zones, read batches and typed
 * arrays then reuses pages instead of faulting fresh ones in.
 */
const MMAP_THRESHOLD = 1 << 20;
const TRIM_THRESHOLD = 8 << 20;

/** The command line being run, as its error lines name it (for a line main() itself cannot write). */
let running = 'dmthin';

export async function main(argv: string[]): Promise<number> {
  let ctx: CliContext | undefined;
  let name = 'dmthin';
  guardStdio();
  tuneAllocatorOnLoad(MMAP_THRESHOLD, TRIM_THRESHOLD);
  const getCtx = () => ctx!;
  const program = new Command('dmthin')
    .description('Linux device-mapper thin provisioning toolkit')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => print(s),
      writeErr: (s) => printErr(s),
      // Commander's own answers read process.stdout and process.stderr, which
      // for a pipe or a file loads net, tty and the streams (~10 ms of a
      // --help); the streams are made only for a terminal. The help has no
      // styles, so there are no colours to keep or strip. 80 columns is
      // commander's own width without a terminal.
      getOutHelpWidth: () => (fdIsTTY(1) ? process.stdout.columns : undefined) ?? 80,
      getErrHelpWidth: () => (fdIsTTY(2) ? process.stderr.columns : undefined) ?? 80,
      getOutHasColors: () => false,
      getErrHasColors: () => false,
    })
    .showHelpAfterError(false);
  addVersionOption(program);
  program.hook('preAction', (_p, action) => {
    noteActionRan();
    const parent = action.parent && action.parent !== program ? `${action.parent.name()} ` : '';
    name = running = `dmthin ${parent}${action.name()}`;
    ctx = new CliContext(name);
    refuseEmptyValues(action);
  });
  const first = argv[0];
  if (first !== undefined && Object.hasOwn(COMMANDS, first)) COMMANDS[first]().register(program, getCtx);
  else {
    // Help, a usage error: each command as the root help lists it (COMMAND_LIST), not loaded. A
    // command named anywhere on the line (`help send`, `-- send`) is registered whole: commander
    // may run it or print its own help.
    for (const c of Object.keys(COMMANDS)) {
      if (argv.includes(c)) COMMANDS[c]().register(program, getCtx);
      else listCommand(program, c);
    }
  }
  // Hidden companion of -m: the attached block number (see rewriteMetadataSnapArgs).
  for (const c of program.commands) {
    if (c.options.some((o) => o.long === '--metadata-snap')) {
      c.addOption(new Option('--metadata-snap-block <block>').hideHelp());
    }
  }
  routeParserErrors(program, 'dmthin');
  try {
    const named = program.commands.find((c) => c.name() === first);
    const sub = named?.commands.find((c) => c.name() === argv[1]);
    if (named) name = running = `dmthin ${named.name()}${sub ? ` ${sub.name()}` : ''}`;
    await program.parseAsync(rewriteMetadataSnapArgs(expandLongOptionPrefixes(argv, named), named), { from: 'user' });
    await finishStdout(ctx?.signal);
    if (ctx) await ctx.runCleanups();
    return ctx?.exitStatus ?? 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help, --version: their text must reach stdout too.
      if (e.exitCode === 0) return finishStdout().then(
        () => 0,
        (x) => (isEpipe(x) ? EXIT_EPIPE : (printErr(errorLine(parserCommand(e), x) + '\n'), EXIT_FAILURE)),
      );
      printErr(errorLine(parserCommand(e), parserError(e, argv)) + '\n');
      return EXIT_FAILURE; // a usage error: 1, as the reference tools
    }
    // A failure reading a live pool's snapshot that something released meanwhile is that release (ESTALE).
    const err = ctx && !ctx.wasSignalled() && !isEpipe(e) ? await ctx.explain(e) : e;
    const epipe = isEpipe(err) && !ctx?.wasSignalled();
    if (ctx?.done && err instanceof DmthinError && err.message.endsWith(OUTPUT_INCOMPLETE)) {
      err.message = `${err.message.slice(0, -OUTPUT_INCOMPLETE.length)}; ${ctx.done}: only its report was lost`;
    }
    // Interrupted once its work stood (a report waiting on a reader that stopped reading): say that it stands.
    const said = !ctx?.wasSignalled() ? err : ctx.done ? new AbortError(`interrupted; ${ctx.done}: only its report was lost`) : interruptedError(err);
    if (!epipe) printErr(errorLine(name, said) + '\n');
    const status = epipe ? EXIT_EPIPE : ctx ? ctx.exitCodeFor() : EXIT_FAILURE;
    if (ctx) await ctx.runCleanups();
    return status;
  }
}

/**
 * -V, --version as commander's version() makes it (the same option, help line
 * and answer: the version on stdout, exit 0), with the version read only
 * when it is asked for; version() takes the text itself, up front. Like any
 * program option it is taken anywhere on the line (`dmthin ls -V`).
 */
function addVersionOption(program: Command): void {
  program.addOption(new Option('-V, --version', 'output the version number'));
  program.on('option:version', () => {
    const version = packageVersion();
    program.configureOutput().writeOut!(`${version}\n`);
    throw new CommanderError(0, 'commander.version', version);
  });
}

/**
 * Command `name` as the root help lists it, from COMMAND_LIST: its
 * description, its arguments, and a hidden option where it has options
 * (commander's term then says "[options]"). It never runs: program.ts lists
 * commands so only when the command line names none of them.
 */
function listCommand(program: Command, name: string): void {
  const l = COMMAND_LIST[name];
  const cmd = program.command(name).description(l.description);
  for (const a of l.args) cmd.argument(a);
  if (l.options) cmd.addOption(new Option('--listed-only').hideHelp());
}

/** Values that name a file, a device, a repository or a pool: an empty one names nothing. */
const NAMING = /^<(file|dir|path|metadata|device|repo|name)>$/;

/**
 * An empty path or name ('' from an unset shell variable) is a usage error
 * naming the option, before anything is opened: opened, it read as "no such
 * file or directory" with no name, or as the current directory. -o has its
 * own message ("-o needs a file name ('-' for stdout)").
 */
function refuseEmptyValues(cmd: Command): void {
  for (const opt of cmd.options) {
    const placeholder = /<[^>]+>/.exec(opt.flags)?.[0];
    if (placeholder === undefined || !NAMING.test(placeholder) || opt.long === '--output') continue;
    const v: unknown = cmd.getOptionValue(opt.attributeName());
    if (v === '' || (Array.isArray(v) && v.includes(''))) {
      throw new UsageError(`${opt.long ?? opt.short} is empty: give a ${placeholder === '<name>' ? 'name' : placeholder === '<repo>' ? 'repository path or URL' : placeholder === '<dir>' ? 'directory' : 'path'}`);
    }
  }
  cmd.registeredArguments.forEach((arg, i) => {
    const v: unknown = cmd.processedArgs[i];
    if (NAMING.test(`<${arg.name()}>`) && (v === '' || (Array.isArray(v) && v.includes('')))) {
      throw new UsageError(`the <${arg.name()}> argument is empty: give a ${arg.name() === 'name' ? 'name' : 'path'}`);
    }
  });
}

const PARSED_BY = Symbol('dmthin command');

/**
 * Commander prints its own errors ("error: unknown option '--x'") and, for a
 * missing subcommand, the whole help on stderr. Both are silenced here and
 * reach main() as a CommanderError tagged with the command that was parsing,
 * so they come out as every other error: one "dmthin CMD: ... [EINVAL]" line.
 */
function routeParserErrors(cmd: Command, path: string): void {
  cmd.exitOverride((err) => {
    throw Object.assign(err, { [PARSED_BY]: { path, subcommands: cmd.commands.map((c) => c.name()).filter((n) => n !== 'help') } });
  });
  cmd.configureOutput({ writeErr: () => undefined, outputError: () => undefined });
  for (const sub of cmd.commands) routeParserErrors(sub, `${path} ${sub.name()}`);
}

type Parsed = { path: string; subcommands: string[] };
const parsedBy = (e: CommanderError): Parsed => (e as CommanderError & { [PARSED_BY]?: Parsed })[PARSED_BY] ?? { path: 'dmthin', subcommands: [] };

function parserCommand(e: CommanderError): string {
  return parsedBy(e).path;
}

/** Commander's message as a UsageError: no "error: " prefix, one line, and where to look. */
function parserError(e: CommanderError, argv: string[]): UsageError {
  const { path, subcommands } = parsedBy(e);
  const help = `see '${path} --help'`;
  // Help written to stderr with status 1: a command group ran without a
  // subcommand, or `help NAME` named none of them.
  if (e.code === 'commander.help') {
    const asked = argv[argv.indexOf('help') + 1];
    if (argv.includes('help') && asked !== undefined && !subcommands.includes(asked)) return new UsageError(`unknown command '${asked}'; ${help}`);
    return new UsageError(`a command is required (${subcommands.join(', ')}); ${help}`);
  }
  let text = e.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').replace(/\.$/, '').replace('(Did you mean', '(did you mean');
  const excess = /^too many arguments.*Expected (\d+) arguments? but got (\d+)/.exec(text);
  if (excess) text = `too many arguments: expected ${excess[1]}, got ${excess[2]}`;
  return new UsageError(`${text}; ${help}`);
}

/**
 * After the command, Node ends the process; should it not within this long
 * (a V8 shutdown deadlock, see native/exit_guard.cc), the guard ends it with
 * the command's status. Its output is written by then.
 */
const EXIT_GRACE_MS = 2000;

/**
 * Node's own work after the command that must not be skipped: profiles and
 * coverage are written in its teardown.
 */
function nodeTeardownNeeded(): boolean {
  return process.env.NODE_V8_COVERAGE !== undefined || [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => /--(cpu-prof|heap-prof|prof\b|inspect)/.test(a));
}

/** Runs the command line on `argv` (without node and the script) and ends the process with its status. */
export function run(argv: string[]): void {
  const end = (code: number): void => {
    process.exitCode = code;
    // The command is over: its output is written (finishStdout), its
    // cleanups have run. A process that loaded the addon ends here, after its
    // 'exit' listeners (the code cache, the metadata snapshot guard), without
    // Node's teardown: 10-15 ms of freeing a walk's heap, and where Node 20
    // can deadlock (native/exit_guard.cc). Otherwise Node ends it, under the guard.
    if (addonLoaded() && !nodeTeardownNeeded()) {
      try {
        process.emit('exit', code);
      } catch (e) {
        printErr(errorLine('dmthin', e) + '\n');
        code = EXIT_FAILURE;
      }
      exitNow(code);
    }
    armExitGuard(code, EXIT_GRACE_MS);
  };
  // An exit status is a promise: should the command's work stop without
  // settling (a promise nothing will resolve, the event loop empty), Node would
  // end the process with 0. It ends with 1 and says so instead. (Not by
  // setting process.exitCode up front: commander's help() takes a nonzero
  // process.exitCode for its own, and `dmthin help CMD` exited 1.)
  let settled = false;
  process.once('beforeExit', () => {
    if (settled) return;
    printErr(
      errorLine(running, new DmthinError('EUNKNOWN', 'internal error: the command stopped before it finished (its work was left waiting on nothing); what it did is incomplete, run it again')) + '\n',
    );
    process.exitCode = EXIT_FAILURE;
  });
  main(argv).then(
    (code) => {
      settled = true;
      end(code);
    },
    (e) => {
      settled = true;
      printErr(errorLine('dmthin', e) + '\n');
      end(EXIT_FAILURE);
    },
  );
}
