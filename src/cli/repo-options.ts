/**
 * What every command that opens a backup repository shares: the key
 * (`--key-file`, else a passphrase from DMTHIN_REPO_PASSPHRASE, else none:
 * an unencrypted repository) and the wording of library errors for a
 * command-line user.
 */
import type { Command } from 'commander';
import { DmthinError, UsageError } from '../errors';
import type { KeySource } from '../repo/repository';

/** The environment variable a passphrase is taken from (never a flag: it would show in `ps`). */
export const PASSPHRASE_ENV = 'DMTHIN_REPO_PASSPHRASE';

export interface KeyCliOpts {
  keyFile?: string;
}

/** Adds --key-file to a command. */
export function keyOption(cmd: Command): Command {
  return cmd.option('--key-file <file>', `key file of an encrypted repository (32 random bytes, raw or hex); else a passphrase is read from $${PASSPHRASE_ENV} when set`);
}

/**
 * The key the options and the environment give, or undefined (unencrypted).
 * A variable set but empty is refused, not taken as unset: it is what a
 * secret that failed to load gives (`$(cat missing-file)`), and `backups
 * init` would make an unencrypted repository of it.
 */
export function keySource(o: KeyCliOpts): KeySource | undefined {
  if (o.keyFile !== undefined) return { keyFile: o.keyFile };
  const p = process.env[PASSPHRASE_ENV];
  if (p === '')
    throw new UsageError(`$${PASSPHRASE_ENV} is set but empty: set it to the repository's passphrase, or unset it for a repository without encryption`);
  return p !== undefined ? { passphrase: p } : undefined;
}
