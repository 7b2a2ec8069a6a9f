/**
 * The CLI's commands by name, each loaded on demand: a run loads only the
 * command it runs (the whole set costs ~20 ms of start-up, a tenth of a small
 * dump); help loads them all. main.ts reads the names before anything else
 * loads (they name the run's code-cache file), program.ts registers them.
 */
import type { Command } from 'commander';
import type { CliContext } from './common';

export type CommandModule = { register(program: Command, ctx: () => CliContext): void };

export const COMMANDS: Record<string, () => CommandModule> = {
  dump: () => require('./dump'),
  ls: () => require('./ls'),
  delta: () => require('./delta'),
  rmap: () => require('./rmap'),
  pool: () => require('./pool'),
  message: () => require('./message'),
  devices: () => require('./devices'),
  send: () => require('./send'),
  receive: () => require('./receive'),
  replicate: () => require('./replicate'),
  merge: () => require('./merge'),
  check: () => require('./check'),
  backup: () => require('./backup'),
  restore: () => require('./restore'),
  backups: () => require('./backups'),
};
