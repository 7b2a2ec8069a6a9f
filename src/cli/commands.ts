/**
 * The CLI's commands by name, each loaded on demand: a run loads only the
 * command it runs (the whole set costs ~20 ms of start-up, a tenth of a small
 * dump); help lists them from COMMAND_LIST. main.ts reads the names before
 * anything else loads (they name the run's code-cache file), program.ts
 * registers them.
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

/**
 * What the root help lists of each command: its arguments and whether it
 * has options (commander's term, "dump [options] <metadata>") and its
 * description, which the command's own file gives from here. Help and usage
 * errors list the commands from this table without loading them (loading
 * all fifteen was ~9 ms of a --help); test/cli/help-listing.test.ts checks
 * that the listing is the one the commands make themselves.
 */
export const COMMAND_LIST: Record<string, { args: string[]; options: boolean; description: string }> = {
  dump: { args: ['<metadata>'], options: true, description: 'dump pool metadata (byte-identical to thin_dump 0.9.0 for xml and human_readable)' },
  ls: { args: ['<metadata>'], options: true, description: 'list thin devices with mapped, exclusive and shared usage (as thin_ls 0.9.0)' },
  delta: { args: ['<metadata>'], options: true, description: 'differences between two thin devices (byte-identical to thin_delta 0.9.0 for xml)' },
  rmap: { args: ['<metadata>'], options: true, description: 'which thin devices map the given data blocks (thin_rmap 0.9.0\'s output, but every device of a shared subtree)' },
  pool: { args: [], options: false, description: 'status and messages of a live thin-pool (needs root and device-mapper)' },
  message: { args: ['<name>', '<sector>', '<message...>'], options: true, description: 'send a raw target message (DM_TARGET_MSG); prints the reply if the target returns one' },
  devices: { args: [], options: true, description: 'list device-mapper devices with their tables' },
  send: { args: [], options: true, description: 'write a snapshot, or its changes since a base snapshot, as a verifiable stream' },
  receive: { args: [], options: true, description: 'verify a send stream, then apply it to a block device or file' },
  replicate: { args: [], options: true, description: 'replicate a live thin device: snapshot, send the changes, keep only what the next increment needs; cycle after cycle' },
  merge: { args: [], options: true, description: 'merge a snapshot back into its origin: an external origin device, or a thin of the same pool' },
  check: { args: ['<metadata>'], options: true, description: 'verify pool metadata: trees, device details and both space maps (a superset of thin_check 0.9.0)' },
  backup: { args: [], options: true, description: 'store a snapshot in a backup repository: only what changed since the volume\'s last backup, deduplicated' },
  restore: { args: [], options: true, description: 'write a backup from a repository onto a block device or file (only the differing chunks when the target holds another backup of the volume)' },
  backups: { args: [], options: false, description: 'create, list, verify, prune a backup repository, and delete one backup' },
};
