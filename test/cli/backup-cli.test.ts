/**
 * `dmthin backup`, `restore` and `backups init|list|verify|prune` as a user
 * runs them (the built CLI in a child process): --json outputs, exit
 * statuses, one-line errors that name the flags, keys from --key-file and
 * DMTHIN_REPO_PASSPHRASE. The pool is made by thin_restore (test/ops/backup-fixture.ts).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Repository } from '../../src/repo/repository';
import { CLI } from './run-cli';
import { gateMount, mountSmallTmpfs } from './output-helpers';
import { scratch, type Scratch } from '../stream/helpers';
import { deviceBytes, edit, makePool, runs, sha256, type PoolImages } from '../ops/backup-fixture';
import { testAsRoot } from '../helpers/root';

const BS = 128;
const BLOCK = BS * 512;
const SIZE = 64 * BLOCK;
const dev1 = runs([0, 0, 40]);
const dev2 = edit(dev1, runs([5, 100, 5]), [30, 31]);

let s: Scratch;
let pool: PoolImages;
beforeAll(() => {
  s = scratch();
  pool = makePool(s.dir, 'pool', {
    dataBlockSize: BS,
    nrDataBlocks: 256,
    devices: new Map([
      [1, dev1],
      [2, dev2],
    ]),
    zeroBlocks: new Set(),
  });
});
afterAll(() => s.cleanup());

function cli(args: string[], env: Record<string, string | undefined> = {}) {
  const e = { ...process.env, ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete e[k];
  if (!('DMTHIN_REPO_PASSPHRASE' in env)) delete e.DMTHIN_REPO_PASSPHRASE;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: e, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const offline = (snap: number, repo: string, extra: string[] = []) => [
  'backup', '--metadata', pool.metadata, '--data', pool.data, '--snap', String(snap), '--size', String(SIZE), '--repo', repo, '--volume', 'vm1', ...extra,
];

/** One line on stderr, as every dmthin error. */
function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  return lines[0];
}

describe('unencrypted repository', () => {
  let repo: string;
  const ids: string[] = [];
  beforeAll(() => {
    repo = s.path('plain-repo');
  });

  test('backups init creates it once; a second init is refused', () => {
    const r = cli(['backups', 'init', '--repo', repo, '--json']);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ encrypted: false });
    const again = cli(['backups', 'init', '--repo', repo]);
    expect(again.status).toBe(1);
    expect(oneLine(again.stderr)).toMatch(/^dmthin backups init: .*already exists.*\[EEXIST\]$/);
  });

  test('backups init refuses a directory that holds other files, and leaves them alone; empty subdirectories are fine', () => {
    const dir = s.path('not-empty');
    mkdirSync(join(dir, 'docs'), { recursive: true });
    writeFileSync(join(dir, 'docs', 'notes.txt'), 'mine');
    const r = cli(['backups', 'init', '--repo', dir]);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^dmthin backups init: .*not-empty is not empty \(it holds docs\/notes\.txt\): a repository is made in an empty directory .*\[EEXIST\]$/);
    expect(readdirSync(dir, { recursive: true }).sort()).toEqual(['docs', join('docs', 'notes.txt')]);
    const empty = s.path('only-dirs');
    mkdirSync(join(empty, 'sub'), { recursive: true });
    expect(cli(['backups', 'init', '--repo', empty]).status).toBe(0);
  });

  test('backup --json prints id, volume, chunksNew, bytesUploaded; the second is incremental', () => {
    const a = cli([...offline(1, repo), '--json']);
    expect(a.stderr).toBe('');
    expect(a.status).toBe(0);
    const ja = JSON.parse(a.stdout);
    expect(ja).toMatchObject({ volume: 'vm1', base: null, chunksNew: dev1.size, chunks: dev1.size });
    expect(typeof ja.id).toBe('string');
    expect(ja.bytesUploaded).toBeGreaterThan(0);
    const b = cli([...offline(2, repo), '--json']);
    expect(b.status).toBe(0);
    const jb = JSON.parse(b.stdout);
    expect(jb).toMatchObject({ base: ja.id, chunksRead: 5, chunksNew: 5, chunks: dev2.size });
    ids.push(ja.id, jb.id);
    const text = cli(offline(2, repo));
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(/^backup \S+ of vm1: 38 chunks, 0 new \(0 bytes uploaded\); read 0 chunks, the rest from backup /);
    ids.push(text.stdout.split(' ')[1]);
  });

  test('backups list --json lists them oldest first', () => {
    const r = cli(['backups', 'list', '--repo', repo, '--json']);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).map((b: { id: string }) => b.id)).toEqual(ids);
    const t = cli(['backups', 'list', '--repo', repo]);
    expect(t.stdout.trim().split('\n')).toHaveLength(3);
  });

  test('restore --json, each backup byte for byte; without --create a missing file is refused naming --create', () => {
    const target = s.path('cli-restore.img');
    const no = cli(['restore', '--repo', repo, '--backup', ids[0], '--target', target]);
    expect(no.status).toBe(1);
    expect(oneLine(no.stderr)).toMatch(/^dmthin restore: target .* does not exist \(--create makes a file target\) \[ENOENT\]$/);
    expect(existsSync(target)).toBe(false);
    for (const [i, dev] of [
      [0, 1],
      [1, 2],
    ] as const) {
      const r = cli(['restore', '--repo', repo, '--backup', ids[i], '--target', target, '--create', '--json']);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j).toMatchObject({ backup: ids[i], volume: 'vm1', previous: i === 0 ? null : ids[0] });
      expect(statSync(target).size).toBe(SIZE);
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, dev, SIZE)));
    }
  });

  test('restore refuses a target or state file inside the repository, and a state file that is the target; nothing is written', () => {
    const config = readFileSync(`${repo}/config`);
    let r = cli(['restore', '--repo', repo, '--backup', ids[0], '--target', s.path('hp.img'), '--create', '--state', `${repo}/config`]);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^dmthin restore: the restore state file .* is inside the repository .*\[EINVAL\]$/);
    expect(readFileSync(`${repo}/config`).equals(config)).toBe(true);
    r = cli(['restore', '--repo', repo, '--backup', ids[0], '--target', `${repo}/backups/x.img`, '--create']);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^dmthin restore: the target .* is inside the repository .*\[EINVAL\]$/);
    expect(existsSync(`${repo}/backups/x.img`)).toBe(false);
    r = cli(['restore', '--repo', repo, '--backup', ids[0], '--target', s.path('hp2.img'), '--create', '--state', s.path('hp2.img')]);
    expect(r.status).toBe(1);
    // The command line's own check of output paths finds it first (a target not made yet included).
    expect(oneLine(r.stderr)).toMatch(/^dmthin restore: the state file \(--state\) .* is the target \(--target\): writing there would destroy it; choose another path \[EINVAL\]$/);
    expect(existsSync(s.path('hp2.img'))).toBe(false);
    // A hard link to a repository file (the same filesystem): no path shows it, so a file with other links there is refused (outside hunt: exit 0, the config overwritten).
    linkSync(`${repo}/config`, s.path('hl.img'));
    r = cli(['restore', '--repo', repo, '--backup', ids[0], '--target', s.path('hl.img'), '--create']);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^dmthin restore: the target .*hl\.img has 1 other hard link on the filesystem of the repository .* may be one of its files.*\[EINVAL\]$/);
    expect(readFileSync(`${repo}/config`).equals(config)).toBe(true);
    rmSync(s.path('hl.img'));
  });

  // The repository's directory under another path (a bind mount): no path prefix shows it (outside hunt: exit 0, config overwritten).
  testAsRoot('restore refuses a target in the repository reached through a bind mount; the config unchanged', () => {
    const config = readFileSync(`${repo}/config`);
    const bm = s.path('bind');
    mkdirSync(bm);
    expect(spawnSync('mount', ['--bind', repo, bm]).status).toBe(0);
    try {
      for (const target of [`${bm}/config`, `${bm}/new.img`]) {
        const r = cli(['restore', '--repo', repo, '--backup', ids[0], '--target', target, '--create']);
        expect(r.status).toBe(1);
        expect(oneLine(r.stderr)).toMatch(/^dmthin restore: the target .* is inside the repository .* \(.*bind is its directory under another path\).*\[EINVAL\]$/);
      }
      expect(readFileSync(`${repo}/config`).equals(config)).toBe(true);
      expect(existsSync(`${repo}/new.img`)).toBe(false);
    } finally {
      spawnSync('umount', [bm]);
    }
  });

  test('a key file that is no small regular file (a FIFO nobody writes, /dev/zero, a large file) is refused at once, not read', () => {
    const fifo = s.path('key.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    writeFileSync(s.path('key.big'), Buffer.alloc(1 << 20));
    for (const [keyFile, re] of [
      [fifo, /key file .*key\.fifo is not a regular file/],
      ['/dev/zero', /key file \/dev\/zero is not a regular file/],
      [s.path('key.big'), /key file .*key\.big holds 1048576 bytes, not a key/],
    ] as const) {
      const r = cli(['backups', 'init', '--repo', s.path(`kr-${keyFile.length}`), '--key-file', keyFile]);
      expect(r.status).toBe(1);
      expect(oneLine(r.stderr)).toMatch(re);
    }
  });

  test('offline backup without --size is refused naming --size', () => {
    const args = offline(1, repo);
    args.splice(args.indexOf('--size'), 2);
    const r = cli(args);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^dmthin backup: .*--size BYTES.*\[EINVAL\]$/);
  });

  test('verify: clean is exit 0; a missing chunk is exit 1 naming the backup and the byte range', async () => {
    const ok = cli(['backups', 'verify', '--repo', repo, '--data', '--json']);
    expect(ok.status).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ backups: 3, problems: [] });
    // Chunk 5 of the second backup is new in it (data block 100); the third backup names it too.
    const id = ids[1];
    const r = await Repository.open(repo);
    let victim = '';
    for await (const e of (await r.readManifest(id)).entries) if (e.index === 5) victim = e.id;
    await r.close();
    const files = spawnSync('find', [`${repo}/chunks`, '-type', 'f', '-name', victim], { encoding: 'utf8' }).stdout.trim().split('\n');
    expect(files).toHaveLength(1);
    rmSync(files[0]);
    const bad = cli(['backups', 'verify', '--repo', repo]);
    expect(bad.status).toBe(1);
    expect(bad.stdout).toContain(`backup ${id}: chunk 5 at byte ${5 * BLOCK} (${victim}) missing`);
    expect(oneLine(bad.stderr)).toBe(
      `dmthin backups verify: 2 problems found; the first: backup ${id}, chunk 5 (device bytes ${5 * BLOCK}..${6 * BLOCK - 1}) is missing; ` +
        'the backups naming it cannot be restored whole, nor can incrementals made on them: a dmthin backup --full of a snapshot that still holds that data stores it again, else delete them (dmthin backups delete) [ENOENT]',
    );
    const rr = cli(['restore', '--repo', repo, '--backup', id, '--target', s.path('broken.img'), '--create']);
    expect(rr.status).toBe(1);
    expect(oneLine(rr.stderr)).toMatch(new RegExp(`^dmthin restore: backup ${id}: chunk 5 \\(device bytes ${5 * BLOCK}\\.\\.${6 * BLOCK - 1}\\) is missing: .* is incomplete .*\\[ENOENT\\]$`));
    // What the message advises: a full backup of a snapshot that still holds the data (snap 2, under
    // another volume here) stores the chunk again, and the backups naming it are whole.
    const refill = cli([...offline(2, repo, ['--volume', 'refill', '--full']), '--json']);
    expect(refill.status).toBe(0);
    expect(cli(['backups', 'verify', '--repo', repo, '--data']).status).toBe(0);
    expect(cli(['restore', '--repo', repo, '--backup', id, '--target', s.path('broken.img'), '--create']).status).toBe(0);
    expect(cli(['backups', 'delete', '--repo', repo, '--backup', JSON.parse(refill.stdout).id]).status).toBe(0);
  });

  test('prune --keep-last 1 --json keeps the newest and collects the rest', () => {
    const none = cli(['backups', 'prune', '--repo', repo]);
    expect(none.status).toBe(1);
    expect(oneLine(none.stderr)).toMatch(/--keep-last/);
    const r = cli(['backups', 'prune', '--repo', repo, '--keep-last', '1', '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.kept).toEqual([ids[2]]);
    expect(j.deleted.sort()).toEqual([ids[0], ids[1]].sort());
    expect(JSON.parse(cli(['backups', 'list', '--repo', repo, '--json']).stdout).map((b: { id: string }) => b.id)).toEqual([ids[2]]);
  });

  test('prune --dry-run says which backups it would delete and does not claim a count of freed chunks', () => {
    const repo2 = s.path('dry-run-repo');
    expect(cli(['backups', 'init', '--repo', repo2]).status).toBe(0);
    for (const snap of [1, 2]) expect(cli(offline(snap, repo2)).status).toBe(0);
    const r = cli(['backups', 'prune', '--repo', repo2, '--keep-last', '1', '--dry-run']);
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^would delete \S+$/);
    expect(lines[1]).toBe('kept 1 backup, would delete 1; chunks are counted and freed only by a prune without --dry-run');
    expect(JSON.parse(cli(['backups', 'list', '--repo', repo2, '--json']).stdout)).toHaveLength(2);
    // Counts not computed are null in JSON, not 0 (outside hunt J).
    const j = JSON.parse(cli(['backups', 'prune', '--repo', repo2, '--keep-last', '1', '--dry-run', '--json']).stdout);
    expect(j).toMatchObject({ deletedChunks: null, freedBytes: null, deletedTemporary: null });
    expect(j.deleted).toHaveLength(1);
  });

  test('a backup\'s source has one shape in JSON: dataImage (none with --pool-id) and mappingRoot are null when absent, never left out (outside hunt J)', () => {
    const repo3 = s.path('shape-repo');
    expect(cli(['backups', 'init', '--repo', repo3]).status).toBe(0);
    const b = JSON.parse(cli([...offline(1, repo3, ['--pool-id', 'mypool', '--json'])]).stdout);
    expect(b.source).toMatchObject({ kind: 'dm-thin', pool: 'mypool', dataImage: null, mappingRoot: expect.any(String) });
    expect(cli(offline(2, repo3)).status).toBe(0);
    const list = JSON.parse(cli(['backups', 'list', '--repo', repo3, '--json']).stdout) as { source: Record<string, unknown> }[];
    expect(list.map((x) => Object.keys(x.source).sort())).toEqual([Object.keys(list[0].source).sort(), Object.keys(list[0].source).sort()]);
    expect(list[0].source.dataImage).toBeNull();
    expect(typeof list[1].source.dataImage).toBe('string');
  });
});

test('a backup whose report cannot be written (stdout /dev/full) says it was committed: exit 1, and the backup is listed', () => {
  const repo = s.path('full-stdout-repo');
  expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
  const fd = openSync('/dev/full', 'w');
  const env = { ...process.env };
  delete env.DMTHIN_REPO_PASSPHRASE;
  let r;
  try {
    r = spawnSync(process.execPath, [CLI, ...offline(1, repo)], { stdio: ['ignore', fd, 'pipe'], encoding: 'utf8', timeout: 120_000, env });
  } finally {
    closeSync(fd);
  }
  expect(r.status).toBe(1);
  const line = oneLine(r.stderr);
  expect(line).toMatch(/^dmthin backup: cannot write stdout: no space left on device; backup (\S+) of vm1 was committed: only its report was lost \[ENOSPC\]$/);
  const id = /backup (\S+) of vm1 was committed/.exec(line)![1];
  expect(JSON.parse(cli(['backups', 'list', '--repo', repo, '--json']).stdout).map((b: { id: string }) => b.id)).toEqual([id]);
});

describe('encrypted repository', () => {
  test('--key-file: made by init when missing, needed by every command; a wrong key is EACCES', () => {
    const repo = s.path('key-repo');
    const key = s.path('repo.key');
    const init = cli(['backups', 'init', '--repo', repo, '--key-file', key, '--json']);
    expect(init.status).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ encrypted: true, keyFileCreated: true });
    expect(statSync(key).mode & 0o777).toBe(0o600);
    const b = cli([...offline(1, repo), '--key-file', key, '--json']);
    expect(b.status).toBe(0);
    const id = JSON.parse(b.stdout).id;
    const noKey = cli(['backups', 'list', '--repo', repo]);
    expect(noKey.status).toBe(1);
    expect(oneLine(noKey.stderr)).toMatch(/\[EACCES\]$/);
    const otherKey = s.path('other.key');
    cli(['backups', 'init', '--repo', s.path('other-repo'), '--key-file', otherKey]);
    const wrong = cli(['restore', '--repo', repo, '--backup', id, '--target', s.path('enc.img'), '--create', '--key-file', otherKey]);
    expect(wrong.status).toBe(1);
    expect(oneLine(wrong.stderr)).toMatch(/^dmthin restore: .*\[EACCES\]$/);
    expect(existsSync(s.path('enc.img'))).toBe(false);
    const ok = cli(['restore', '--repo', repo, '--backup', id, '--target', s.path('enc.img'), '--create', '--key-file', key]);
    expect(ok.status).toBe(0);
    expect(sha256(readFileSync(s.path('enc.img')))).toBe(sha256(deviceBytes(pool, 1, SIZE)));
  });

  test('--key-file in a directory that does not exist: one line naming the directory and what to do, with its code (not Node\'s ENOENT text under EINVAL); nothing made', () => {
    const repo = s.path('no-key-dir-repo');
    const key = s.path('no-such-dir/repo.key');
    const r = cli(['backups', 'init', '--repo', repo, '--key-file', key]);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toBe(
      `dmthin backups init: cannot create key file ${key}: directory ${s.path('no-such-dir')} does not exist; create it, or give --key-file a path in an existing directory [ENOENT]`,
    );
    expect(existsSync(repo)).toBe(false);
  });

  describe('a repository that filled its filesystem (8 MiB tmpfs)', () => {
    const mnt = scratch();
    const fs = gateMount(mountSmallTmpfs(mnt.dir, '8m'), 'a repository on a full filesystem');
    afterAll(() => {
      fs?.unmount();
      mnt.cleanup();
    });
    (fs ? test : test.skip)('the backup that found it full fails with ENOSPC; backups delete and prune free it (they failed with ENOSPC before: each writes a lock first); verify passes', () => {
      const repo = join(fs!.dir, 'repo');
      expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
      const b = cli(offline(1, repo, ['--json', '-q']));
      expect(b.status).toBe(0);
      const id = JSON.parse(b.stdout).id as string;
      fs!.fill(64 << 10); // room for its lock, not for its new chunks
      const full = cli(offline(2, repo, ['--volume', 'vm2', '-q']));
      expect(full.status).toBe(1);
      expect(oneLine(full.stderr)).toMatch(/^dmthin backup: local repository: put of chunks\/.* failed \(ENOSPC\): the filesystem holding .* is full: free space on it, then run again \[ENOSPC\]$/);
      fs!.fill(0);
      const del = cli(['backups', 'delete', '--repo', repo, '--backup', id]);
      expect(del.stderr).toBe('');
      expect(del.status).toBe(0);
      const prune = cli(['backups', 'prune', '--repo', repo, '--keep-last', '1', '--json']);
      expect(prune.stderr).toBe('');
      expect(prune.status).toBe(0);
      expect(JSON.parse(prune.stdout).deletedChunks).toBeGreaterThan(0);
      // Room again: the reserve the delete used is back for the next time.
      expect(statSync(join(repo, 'reserve~space')).size).toBe(1 << 20);
      expect(cli(['backups', 'verify', '--repo', repo]).status).toBe(0);
      fs!.reset();
    });
  });

  describe('--key-file on a full filesystem (64 KiB tmpfs)', () => {
    const mnt = scratch();
    const small = gateMount(mountSmallTmpfs(mnt.dir), 'a key file on a full filesystem');
    afterAll(() => {
      if (small) small.unmount();
      mnt.cleanup();
    });
    (small ? test : test.skip)('one line with ENOSPC, no key file and no temporary file left; with room, init makes it (outside hunt: an empty key file was left)', () => {
      const fs = small!;
      const repo = s.path('full-key-repo');
      const key = join(fs.dir, 'repo.key');
      fs.fill(0);
      const r = cli(['backups', 'init', '--repo', repo, '--key-file', key]);
      expect(r.status).toBe(1);
      expect(oneLine(r.stderr)).toBe(`dmthin backups init: cannot create key file ${key}: no space left in ${fs.dir} (nothing was left there); make room, or give --key-file a path on a filesystem with room [ENOSPC]`);
      expect(fs.files()).toEqual(['filler']);
      expect(existsSync(repo)).toBe(false);
      fs.reset();
      expect(cli(['backups', 'init', '--repo', repo, '--key-file', key]).status).toBe(0);
      expect(statSync(key).size).toBe(32);
      expect(statSync(key).mode & 0o777).toBe(0o600);
      expect(fs.files()).toEqual(['repo.key']);
    });
    (small ? test : test.skip)('restore onto a full filesystem: one line, ENOSPC, saying to make room and run the same restore again (outside hunt: it said only to restore a backup again)', () => {
      const fs = small!;
      fs.reset();
      const repo = s.path('full-restore-repo');
      expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
      const b = cli(offline(1, repo, ['--json', '-q']));
      expect(b.status).toBe(0);
      const id = JSON.parse(b.stdout).id as string;
      fs.fill(16 << 10);
      const target = join(fs.dir, 'r.img');
      const state = s.path('full-restore.json');
      const r = cli(['restore', '--repo', repo, '--backup', id, '--target', target, '--create', '--state', state, '-q']);
      expect(r.status).toBe(1);
      expect(oneLine(r.stderr)).toMatch(
        new RegExp(`^dmthin restore: .*; target ${target} is incomplete \\(its restore state ${state} records it\\): make room there, then run the same restore again \\[ENOSPC\\]$`),
      );
      fs.reset();
    });
  });

  test('a passphrase from DMTHIN_REPO_PASSPHRASE', () => {
    const repo = s.path('pass-repo');
    expect(cli(['backups', 'init', '--repo', repo], { DMTHIN_REPO_PASSPHRASE: 'correct horse' }).status).toBe(0);
    expect(cli([...offline(1, repo)], { DMTHIN_REPO_PASSPHRASE: 'correct horse' }).status).toBe(0);
    const wrong = cli(['backups', 'list', '--repo', repo], { DMTHIN_REPO_PASSPHRASE: 'wrong horse' });
    expect(wrong.status).toBe(1);
    expect(oneLine(wrong.stderr)).toMatch(/^dmthin backups list: .*\[EACCES\]$/);
    const ok = cli(['backups', 'list', '--repo', repo, '--json'], { DMTHIN_REPO_PASSPHRASE: 'correct horse' });
    expect(JSON.parse(ok.stdout)).toHaveLength(1);
  });

  test('DMTHIN_REPO_PASSPHRASE set but empty (a secret that failed to load) is refused: no unencrypted repository is made', () => {
    const repo = s.path('empty-pass-repo');
    const r = cli(['backups', 'init', '--repo', repo], { DMTHIN_REPO_PASSPHRASE: '' });
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toBe(
      "dmthin backups init: $DMTHIN_REPO_PASSPHRASE is set but empty: set it to the repository's passphrase, or unset it for a repository without encryption [EINVAL]",
    );
    expect(existsSync(repo)).toBe(false);
  });
});

test('an interrupted or failed prune names the backups it had deleted (hunt M item 7: it said only "interrupted")', () => {
  const { prunedSoFar } = require('../../dist/cli/backups') as typeof import('../../src/cli/backups');
  const { interruptedError } = require('../../dist/cli/common') as typeof import('../../src/cli/common');
  const { DmthinError } = require('../../dist/errors') as typeof import('../../src/errors');
  // The signal's reason, as CliContext aborts with it; the CLI's line after a signal is interruptedError's.
  const line = interruptedError(prunedSoFar(new DmthinError('ABORT_ERR', 'interrupted by SIGINT'), ['A', 'B'])).message;
  expect(line).toBe('interrupted; it had deleted 2 backups (A, B); the chunks only they used are freed by the next prune');
  const ids = Array.from({ length: 12 }, (_, i) => `b${i}`);
  expect((prunedSoFar(new Error('EIO: i/o error'), ids) as Error).message).toBe(
    'EIO: i/o error; it had deleted 12 backups (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 and 2 more); the chunks only they used are freed by the next prune',
  );
  const none = new Error('x');
  expect(prunedSoFar(none, [])).toBe(none);
});
