/**
 * `dmthin backups init|list|verify|prune|delete`: a backup repository itself.
 */
import type { Command } from 'commander';
import { dirname } from 'node:path';
import { AbortError, DmthinError, isSystemError, RepoError, UsageError } from '../errors';
import type { DamagedBackup, Repository as RepositoryT } from '../repo/repository';
import { CliContext, printErr, cliWording, plural, parseIntArg, print } from './common';
import { backupSourceJson, toJson } from './json';
import { Progress, stderrIsTTY } from './progress';
import { keyOption, keySource, PASSPHRASE_ENV, type KeyCliOpts } from './repo-options';
import { COMMAND_LIST } from './commands';

interface RepoCliOpts extends KeyCliOpts {
  repo: string;
  json?: boolean;
  quiet?: boolean;
}

const repoModule = () => require('../repo/repository') as typeof import('../repo/repository');

async function openRepo(o: RepoCliOpts, c: CliContext): Promise<RepositoryT> {
  const repo = await repoModule().Repository.open(o.repo, { key: keySource(o), signal: c.signal });
  c.onCleanup(() => repo.close());
  return repo;
}

/** A key file that does not exist yet is made (32 random bytes, mode 0600, fsynced). */
async function ensureKeyFile(path: string): Promise<boolean> {
  const { createKeyFile } = require('../repo/keys') as typeof import('../repo/keys');
  try {
    await createKeyFile(path);
    return true;
  } catch (e) {
    if (e instanceof RepoError && e.reason === 'exists') return false;
    throw keyFileError(path, e);
  }
}

/**
 * A key file that could not be made, in one line with the system's code:
 * the library's message carries Node's text ("ENOENT: no such file or
 * directory, open '...'") under EINVAL.
 */
function keyFileError(path: string, e: unknown): unknown {
  const cause = e instanceof DmthinError ? e.cause : undefined;
  if (!isSystemError(cause) || cause.code === undefined) return e;
  const dir = dirname(path);
  const why: Record<string, string> = {
    ENOENT: `directory ${dir} does not exist; create it, or give --key-file a path in an existing directory`,
    ENOTDIR: `a part of ${dir} is not a directory; give --key-file a path in an existing directory`,
    EACCES: `permission denied in ${dir}; give --key-file a path you can write, or run as a user who can`,
    EPERM: `not permitted in ${dir}; give --key-file a path you can write, or run as a user who can`,
    EROFS: `${dir} is on a read-only file system; give --key-file a path on a writable one`,
    ENOSPC: `no space left in ${dir} (nothing was left there); make room, or give --key-file a path on a filesystem with room`,
    EDQUOT: `disk quota exceeded in ${dir} (nothing was left there); make room, or give --key-file another path`,
  };
  const text = why[cause.code] ?? `${cause.code} (${cause.message.replace(/^[A-Z]+: /, '').replace(/, open '.*'$/, '')})`;
  return new RepoError('config', `cannot create key file ${path}: ${text}`, { path, code: cause.code, cause });
}

function count(flag: string, v: string | undefined): number | undefined {
  return v === undefined ? undefined : parseIntArg(flag, v);
}

export function register(program: Command, ctx: () => CliContext): void {
  const group = program.command('backups').description(COMMAND_LIST.backups.description);

  const init = group
    .command('init')
    .description(`create a repository: unencrypted, or encrypted with --key-file (made when missing) or a passphrase from $${PASSPHRASE_ENV}`)
    .requiredOption('--repo <repo>', 'where: a directory, or s3://BUCKET/PREFIX')
    .option('--compression <name>', 'none, deflate[:1-9] or brotli[:0-11] (default brotli:1)');
  keyOption(init)
    .option('--json', 'print what was created as JSON')
    .action(async (o: RepoCliOpts & { compression?: string }) => {
      const c = ctx();
      const madeKey = o.keyFile !== undefined ? await ensureKeyFile(o.keyFile) : false;
      const repo = await repoModule().Repository.create(o.repo, { key: keySource(o), compression: o.compression, signal: c.signal });
      await repo.close();
      const r = { repo: repo.location, encrypted: repo.encrypted, keyFile: o.keyFile ?? null, keyFileCreated: madeKey };
      // Made for good: a lost report must not read as a failed init (a second one is refused).
      c.done = `the ${r.encrypted ? 'encrypted' : 'unencrypted'} repository ${r.repo} was created${madeKey ? ` with the new key file ${o.keyFile}` : ''}`;
      if (o.json) print(toJson(r) + '\n');
      else {
        print(
          `created ${r.encrypted ? 'encrypted' : 'unencrypted'} repository ${r.repo}` +
            (madeKey ? `; new key file ${o.keyFile}: keep a copy elsewhere, without it the backups cannot be read` : '') +
            '\n',
        );
      }
    });

  const list = group
    .command('list')
    .description('list the backups, oldest first')
    .requiredOption('--repo <repo>', 'the repository: a directory, or s3://BUCKET/PREFIX')
    .option('--volume <name>', "only this volume's backups");
  keyOption(list)
    .option('--json', 'print the list as JSON')
    .action(async (o: RepoCliOpts & { volume?: string }) => {
      const c = ctx();
      const repo = await openRepo(o, c);
      // A damaged header does not hide the others: they are listed, then it is named (exit 1).
      const damaged: DamagedBackup[] = [];
      const all = await repo.listBackups({ volume: o.volume, signal: c.signal, onDamaged: (d) => damaged.push(d) });
      if (o.json) print(toJson(all.map((b) => ({ ...b, source: backupSourceJson(b.source) }))) + '\n');
      else {
        for (const b of all) {
          print(
            `${b.id}  ${b.volume}  ${new Date(b.createdMs).toISOString()}  ${plural(b.deviceSize, 'byte')}  ${plural(b.chunks, 'chunk')}  ${b.newChunks} new (${plural(b.storedBytes, 'byte')})${b.base ? `  base ${b.base}` : ''}\n`,
          );
        }
      }
      if (damaged.length) throw repoModule().damagedBackupsError(repo.location, damaged, `the ${all.length} readable backup${all.length === 1 ? ' is' : 's are'} listed`);
    });

  const verify = group
    .command('verify')
    .description("check that every backup's chunks exist (with --data: read and re-hash every chunk)")
    .requiredOption('--repo <repo>', 'the repository: a directory, or s3://BUCKET/PREFIX')
    .option('--data', 'read, authenticate and re-hash every chunk')
    .option('--repair', 'with --data: delete the chunks found damaged (each read again first), so that the next backup of their data stores them again');
  keyOption(verify)
    .option('--json', 'print the report as JSON')
    .option('-q, --quiet', 'no progress bar')
    .action(async (o: RepoCliOpts & { data?: boolean; repair?: boolean }) => {
      const c = ctx();
      if (o.repair && !o.data) throw new UsageError('--repair needs --data: only reading every chunk finds the damaged ones');
      const repo = await openRepo(o, c);
      const bar = new Progress('verify', !o.quiet && stderrIsTTY());
      let r;
      try {
        r = await repo.verify({ data: o.data, signal: c.signal, onProgress: (p) => bar.update(p.chunks, undefined, 'chunks') });
      } finally {
        bar.stop();
      }
      // The report first, complete, whatever the repair then does.
      const repaired = o.repair && r.damagedChunks.length > 0 ? await repo.removeDamagedChunks(r.damagedChunks, { signal: c.signal }) : undefined;
      if (o.json) {
        // A manifest problem has no chunk: null there (docs/json.md), where the library says -1 and ''.
        const problems = r.problems.map((p) => (p.index < 0 ? { ...p, index: null, offset: null, id: null } : p));
        print(toJson(repaired ? { ...r, problems, repair: repaired } : { ...r, problems }) + '\n');
      }
      else {
        for (const p of r.problems) {
          print(p.index < 0 ? `backup ${p.backup}: manifest ${p.reason}\n` : `backup ${p.backup}: chunk ${p.index} at byte ${p.offset} (${p.id}) ${p.reason}\n`);
        }
        print(`${plural(r.backups, 'backup')}, ${plural(r.chunks, 'chunk reference')} checked${o.data ? ' (data re-hashed)' : ''}: ${plural(r.problems.length + r.problemsOmitted, 'problem')}\n`);
        if (repaired) {
          for (const id of repaired.removed) print(`removed damaged chunk ${id}\n`);
          for (const id of repaired.sound) print(`kept chunk ${id}: it read sound the second time\n`);
          print(`repair: ${repaired.removed.length} damaged ${repaired.removed.length === 1 ? 'chunk' : 'chunks'} removed, ${repaired.sound.length} kept (sound when read again)\n`);
        }
      }
      const n = r.problems.length + r.problemsOmitted;
      if (n > 0) {
        const p = r.problems[0];
        const list = (await repo.listBackups({ signal: c.signal, onDamaged: () => undefined })).find((b) => b.id === p.backup);
        const where = p.index < 0 ? 'its manifest' : `chunk ${p.index} (device bytes ${p.offset}..${p.offset + (list ? Math.min(list.chunkSize, list.deviceSize - p.offset) : 1) - 1})`;
        // A backup whose manifest cannot be read cannot be restored: say how to get rid of it.
        // A missing chunk: chunks are stored by content, so a full backup of a snapshot that still reads the same stores it again for every
        // backup naming it (an incremental copies the reference from its base, and a later one with it). A damaged one is present, and a
        // backup does not store a present chunk again: --repair removes it first.
        // One removed by --repair (now or before: its marker) is never passed on by an incremental: any next backup stores it again.
        const removed = repaired?.removed.includes(p.id) === true;
        const marked = removed || (p.reason === 'missing' && (await repo.removedChunks({ signal: c.signal })).has(p.id));
        const storeAgainAfterRepair = 'the next dmthin backup of a snapshot that still holds that data stores it again (it takes no backup naming a removed chunk as its base), else delete them (dmthin backups delete)';
        const storeAgain = marked ? storeAgainAfterRepair : 'a dmthin backup --full of a snapshot that still holds that data stores it again, else delete them (dmthin backups delete)';
        const fix =
          p.index < 0
            ? `; it cannot be restored: delete it with dmthin backups delete --repo ${o.repo} --backup ${p.backup}, or restore its files from a copy`
            : p.reason === 'missing' || removed
              ? `${removed ? ' (now removed)' : ''}; the backups naming it cannot be restored whole${marked ? '' : ', nor can incrementals made on them'}: ${storeAgain}`
              : repaired?.sound.includes(p.id) === true
                ? '; it read sound the second time, so it was kept: run verify --data again to see whether the fault was passing'
                : r.damagedChunks.includes(p.id)
                  ? `; a backup does not store a chunk that is present again: dmthin backups verify --repo ${o.repo} --data --repair removes the damaged ones, then ${storeAgainAfterRepair}`
                  : '';
        throw new RepoError(p.reason === 'missing' ? 'not-found' : 'corrupt', `${n} problem${n === 1 ? '' : 's'} found; the first: backup ${p.backup}, ${where} is ${p.reason}${fix}`, { backup: p.backup });
      }
    });

  const prune = group
    .command('prune')
    .description('delete the backups a retention policy does not keep, then the chunks no backup references')
    .requiredOption('--repo <repo>', 'the repository: a directory, or s3://BUCKET/PREFIX')
    .option('--keep-last <n>', 'keep the newest N backups of each volume')
    .option('--keep-daily <n>', 'keep the newest backup of each of the last N days (UTC) that have one')
    .option('--keep-weekly <n>', 'keep the newest backup of each of the last N ISO weeks (UTC) that have one')
    .option('--volume <name>', "prune only this volume's backups")
    .option('--dry-run', 'say what would be deleted, delete nothing');
  keyOption(prune)
    .option('--json', 'print what was kept and deleted as JSON')
    .action(async (o: RepoCliOpts & { keepLast?: string; keepDaily?: string; keepWeekly?: string; volume?: string; dryRun?: boolean }) => {
      const c = ctx();
      const policy = { keepLast: count('--keep-last', o.keepLast), keepDaily: count('--keep-daily', o.keepDaily), keepWeekly: count('--keep-weekly', o.keepWeekly) };
      const ops = require('../ops/prune') as typeof import('../ops/prune');
      try {
        ops.selectKept([], policy);
      } catch (e) {
        if (e instanceof DmthinError) e.message = 'give --keep-last, --keep-daily or --keep-weekly, at least one of them 1 or more (prune never deletes every backup)';
        throw e;
      }
      const repo = await openRepo(o, c);
      const onWarning = (m: string) => void printErr(`dmthin backups prune: warning: ${m}\n`);
      const gone: string[] = [];
      const r = await ops.prune({ ...policy, repo, volume: o.volume, dryRun: o.dryRun, signal: c.signal, onWarning, onDeleted: (id) => gone.push(id) }).catch((e) => {
        throw prunedSoFar(cliWording(e), gone);
      });
      if (!o.dryRun) c.done = `prune deleted ${plural(r.deleted.length, 'backup')} and ${plural(r.deletedChunks, 'chunk')}`;
      // A dry run counts no chunks: null, not 0 (docs/json.md: a count not computed is null).
      if (o.json) print(toJson(o.dryRun ? { ...r, deletedChunks: null, freedBytes: null, deletedTemporary: null } : r) + '\n');
      else {
        for (const id of r.deleted) print(`${o.dryRun ? 'would delete' : 'deleted'} ${id}\n`);
        // A dry run collects nothing, so it cannot say what would be freed (the JSON's counts are null).
        if (o.dryRun) print(`kept ${plural(r.kept.length, 'backup')}, would delete ${r.deleted.length}; chunks are counted and freed only by a prune without --dry-run\n`);
        else print(`kept ${plural(r.kept.length, 'backup')}, deleted ${r.deleted.length}; ${plural(r.deletedChunks, 'chunk')} (${plural(r.freedBytes, 'byte')}) freed${r.deletedTemporary ? `, ${plural(r.deletedTemporary, 'temporary file')} of interrupted writes removed` : ''}\n`);
      }
    });

  const del = group
    .command('delete')
    .description("delete one backup (also one whose header or map is damaged); its chunks are collected by the next 'backups prune'")
    .requiredOption('--repo <repo>', 'the repository: a directory, or s3://BUCKET/PREFIX')
    .requiredOption('--backup <id>', 'the backup to delete (as backups list shows it)');
  keyOption(del)
    .option('--json', 'print what was deleted as JSON')
    .option('-q, --quiet', 'print nothing when done')
    .action(async (o: RepoCliOpts & { backup: string }) => {
      const c = ctx();
      const repo = await openRepo(o, c);
      // Exclusive, as prune: no backup runs meanwhile (one could be reading this backup as its base).
      await repo.deleteBackups([o.backup], { exclusive: true, signal: c.signal });
      c.done = `backup ${o.backup} was deleted`;
      if (o.json) print(toJson({ deleted: [o.backup] }) + '\n');
      else if (!o.quiet) print(`deleted backup ${o.backup}; its chunks are collected by the next 'dmthin backups prune'\n`);
    });
}

/**
 * A prune that stopped (a signal, an error) after deleting backups says
 * which: they are gone for good, and the chunks only they used stay until a
 * prune completes. The words follow "; " so that an interruption's line keeps them.
 * @internal exported for its test
 */
export function prunedSoFar(e: unknown, gone: readonly string[]): unknown {
  if (gone.length === 0 || !(e instanceof Error)) return e;
  const ids = gone.length <= 10 ? gone.join(', ') : `${gone.slice(0, 10).join(', ')} and ${gone.length - 10} more`;
  const what = `it had deleted ${plural(gone.length, 'backup')} (${ids}); the chunks only they used are freed by the next prune`;
  // An interruption (the signal's reason is a DmthinError with code ABORT_ERR) keeps its words after "; ".
  if ((e as { code?: unknown }).code === 'ABORT_ERR') return new AbortError(`${e.message.split('; ')[0]}; ${what}`);
  e.message = `${e.message}; ${what}`;
  return e;
}
