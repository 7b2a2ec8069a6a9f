#!/usr/bin/env node
/**
 * The dmthin command line. Each subcommand lives in its own file; this one
 * wires them up and owns exit codes: 0 on success, 1 on any error (one line on
 * stderr), 128+n after a signal.
 */
import { Command, CommanderError } from 'commander';
import { CliContext, errorLine, EXIT_FAILURE, rewriteMetadataSnapArgs } from './common';

type CommandModule = { register(program: Command, ctx: () => CliContext): void };

// Loaded on demand: a run loads only the command it runs (the whole set costs
// ~20 ms of start-up, a tenth of a small dump); help loads them all.
const COMMANDS: Record<string, () => CommandModule> = {
  dump: () => require('./dump'),
  ls: () => require('./ls'),
  delta: () => require('./delta'),
  pool: () => require('./pool'),
  message: () => require('./message'),
  devices: () => require('./devices'),
  send: () => require('./send'),
  receive: () => require('./receive'),
  check: () => require('./check'),
};

const VERSION = require('../../package.json').version as string;

export async function main(argv: string[]): Promise<number> {
  let ctx: CliContext | undefined;
  let name = 'dmthin';
  const getCtx = () => ctx!;
  const program = new Command('dmthin')
    .description('Linux device-mapper thin provisioning toolkit')
    .version(VERSION, '-V, --version')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .showHelpAfterError(false);
  program.hook('preAction', (_p, action) => {
    const parent = action.parent && action.parent !== program ? `${action.parent.name()} ` : '';
    name = `dmthin ${parent}${action.name()}`;
    ctx = new CliContext(name);
  });
  const first = argv[0];
  const wanted = first !== undefined && Object.hasOwn(COMMANDS, first) ? [first] : Object.keys(COMMANDS);
  for (const c of wanted) COMMANDS[c]().register(program, getCtx);
  // Hidden companion of -m: the attached block number (see rewriteMetadataSnapArgs).
  for (const c of program.commands) {
    if (c.options.some((o) => o.long === '--metadata-snap')) {
      c.addOption(new (require('commander').Option)('--metadata-snap-block <block>').hideHelp());
    }
  }
  try {
    await program.parseAsync(rewriteMetadataSnapArgs(argv), { from: 'user' });
    if (ctx) await ctx.runCleanups();
    return ctx?.exitStatus ?? 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return 0; // --help, --version
      return EXIT_FAILURE; // commander already printed the message
    }
    const code = (e as { code?: string }).code;
    if (code !== 'EPIPE') process.stderr.write(errorLine(name, ctx?.wasSignalled() ? `interrupted` : e) + '\n');
    const status = ctx ? ctx.exitCodeFor() : EXIT_FAILURE;
    if (ctx) await ctx.runCleanups();
    return status;
  }
}

if (require.main === module) {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(EXIT_FAILURE);
  });
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(errorLine('dmthin', e) + '\n');
      process.exitCode = EXIT_FAILURE;
    },
  );
}
