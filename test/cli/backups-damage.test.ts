/**
 * `dmthin backups ...` on a repository with damaged objects (found by an
 * outside hunt): prune never deletes a good backup because another is
 * damaged, `backups delete` removes one backup, a damaged header does not
 * block the others, and reports that could not be written say the work stands.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, openSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Repository } from '../../src/repo/repository';
import { CLI } from './run-cli';
import { scratch, type Scratch } from '../stream/helpers';
import { deviceBytes, edit, makePool, runs, type PoolImages } from '../ops/backup-fixture';

const BS = 128;
const BLOCK = BS * 512;
const SIZE = 64 * BLOCK;
const dev1 = runs([0, 0, 40]);
const dev2 = edit(dev1, runs([5, 100, 5]), [30, 31]);

let s: Scratch;
let pool: PoolImages;
beforeAll(() => {
  s = scratch();
  pool = makePool(s.dir, 'pool', { dataBlockSize: BS, nrDataBlocks: 256, devices: new Map([[1, dev1], [2, dev2]]), zeroBlocks: new Set() });
});
afterAll(() => s.cleanup());

function cli(args: string[], opts: { stdout?: number; timeout?: number } = {}) {
  const e = { ...process.env };
  delete e.DMTHIN_REPO_PASSPHRASE;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: e, timeout: opts.timeout ?? 60_000, killSignal: 'SIGKILL', stdio: ['ignore', opts.stdout ?? 'pipe', 'pipe'] });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr };
}

/** One line on stderr, as every dmthin error. */
function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  return lines[0];
}

const CS = 512;
const content = (n: number) => Buffer.from(`chunk ${n} `.padEnd(CS, '.'));

/** A repository with `n` backups of each volume (chunk i of backup k: content k*100+i), oldest first. */
async function makeRepo(name: string, volumes: string[], n: number): Promise<{ loc: string; ids: Record<string, string[]> }> {
  const loc = s.path(name);
  await using repo = await Repository.create(loc);
  const ids: Record<string, string[]> = {};
  let t = Date.UTC(2026, 0, 1);
  for (const v of volumes) {
    ids[v] = [];
    for (let k = 0; k < n; k++) {
      const ss = await repo.beginBackup(v);
      const entries = [];
      for (let i = 0; i < 3; i++) entries.push({ index: i, id: (await ss.putChunk(content(k * 100 + i))).id });
      const sum = await ss.commit({ volume: v, deviceSize: 3 * CS, chunkSize: CS, createdMs: (t += 60_000), source: {}, base: null }, entries);
      ids[v].push(sum.id);
    }
  }
  return { loc, ids };
}

/** Flips one bit in the middle of a file. */
function flip(path: string): void {
  const b = readFileSync(path);
  b[b.length >> 1] ^= 1;
  writeFileSync(path, b);
}

const listed = (loc: string) => readdirSync(join(loc, 'backups')).sort();
const chunkCount = (loc: string) => readdirSync(join(loc, 'chunks')).reduce((n, d) => n + readdirSync(join(loc, 'chunks', d)).length, 0);

describe('prune', () => {
  test('a damaged map of a backup it keeps: nothing is deleted, exit 1 naming the backup and backups delete', async () => {
    const { loc, ids } = await makeRepo('prune-map', ['vol'], 3);
    const newest = ids.vol[2];
    flip(join(loc, 'maps', newest));
    const chunks = chunkCount(loc);
    const r = cli(['backups', 'prune', '--repo', loc, '--keep-last', '1']);
    expect(r.status).toBe(1);
    const line = oneLine(r.stderr);
    expect(line).toMatch(/^dmthin backups prune: .*\[EBADMSG\]$/);
    expect(line).toContain(`backup ${newest} cannot be read`);
    expect(line).toContain('nothing was deleted');
    expect(line).toContain(`dmthin backups delete --repo ${loc} --backup ${newest}`);
    expect(line).not.toMatch(/were deleted/);
    expect(listed(loc)).toEqual([...ids.vol].sort());
    expect(chunkCount(loc)).toBe(chunks);
  });

  test("a damaged map of another volume's backup: nothing is deleted", async () => {
    const { loc, ids } = await makeRepo('prune-other', ['a', 'b'], 2);
    flip(join(loc, 'maps', ids.b[0]));
    const r = cli(['backups', 'prune', '--repo', loc, '--keep-last', '1', '--volume', 'a']);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toContain(`backup ${ids.b[0]} cannot be read`);
    expect(listed(loc)).toEqual([...ids.a, ...ids.b].sort());
  });

  test('a damaged map of a backup it deletes does not stop it', async () => {
    const { loc, ids } = await makeRepo('prune-doomed', ['vol'], 3);
    flip(join(loc, 'maps', ids.vol[0]));
    const r = cli(['backups', 'prune', '--repo', loc, '--keep-last', '1', '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ kept: [ids.vol[2]], deleted: [ids.vol[0], ids.vol[1]], deletedChunks: 6 });
    expect(listed(loc)).toEqual([ids.vol[2]]);
    expect(existsSync(join(loc, 'maps', ids.vol[0]))).toBe(false);
  });
});


describe('backups delete', () => {
  test('deletes one backup, also one whose header or map is damaged; its chunks go at the next prune', async () => {
    const { loc, ids } = await makeRepo('delete', ['vol'], 4);
    flip(join(loc, 'backups', ids.vol[1]));
    flip(join(loc, 'maps', ids.vol[2]));
    const chunks = chunkCount(loc);
    const a = cli(['backups', 'delete', '--repo', loc, '--backup', ids.vol[1]]);
    expect(a.stderr).toBe('');
    expect(a.status).toBe(0);
    expect(a.stdout).toBe(`deleted backup ${ids.vol[1]}; its chunks are collected by the next 'dmthin backups prune'\n`);
    const b = cli(['backups', 'delete', '--repo', loc, '--backup', ids.vol[2], '--json']);
    expect(b.status).toBe(0);
    expect(JSON.parse(b.stdout)).toEqual({ deleted: [ids.vol[2]] });
    expect(listed(loc)).toEqual([ids.vol[0], ids.vol[3]].sort());
    expect(existsSync(join(loc, 'maps', ids.vol[1]))).toBe(false);
    expect(chunkCount(loc)).toBe(chunks);
    expect(readdirSync(join(loc, 'locks'))).toEqual([]);
    // Now prune can run: it collects the deleted backups' chunks.
    const p = cli(['backups', 'prune', '--repo', loc, '--keep-last', '2', '--json']);
    expect(p.status).toBe(0);
    expect(JSON.parse(p.stdout)).toMatchObject({ deleted: [], deletedChunks: 6 });
  });

  test('an unknown backup: exit 1, nothing deleted', async () => {
    const { loc, ids } = await makeRepo('delete-unknown', ['vol'], 1);
    const r = cli(['backups', 'delete', '--repo', loc, '--backup', '20260101T000000Z-00000000']);
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^dmthin backups delete: backup 20260101T000000Z-00000000 is not in the repository .*nothing was deleted \[ENOENT\]$/);
    expect(listed(loc)).toEqual(ids.vol);
  });
});

const offline = (snap: number, repo: string, volume: string, extra: string[] = []) => [
  'backup', '--metadata', pool.metadata, '--data', pool.data, '--snap', String(snap), '--size', String(SIZE), '--repo', repo, '--volume', volume, ...extra,
];

describe('a damaged backup header', () => {
  let repo: string;
  let bad: string;
  let good: string;
  beforeAll(() => {
    repo = s.path('header-repo');
    expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
    const a = cli([...offline(1, repo, 'vm1', ['--json'])]);
    expect(a.status).toBe(0);
    bad = JSON.parse(a.stdout).id;
    const b = cli([...offline(1, repo, 'other', ['--json'])]);
    expect(b.status).toBe(0);
    good = JSON.parse(b.stdout).id;
    flip(join(repo, 'backups', bad));
  });

  test('backup of any volume goes on with one warning naming it and backups delete', () => {
    const warning = `dmthin backup: warning: backup ${bad} cannot be read (`;
    const other = cli([...offline(2, repo, 'other', ['--json'])]);
    expect(other.status).toBe(0);
    expect(oneLine(other.stderr)).toContain(warning);
    expect(other.stderr).toContain(`dmthin backups delete --repo ${repo} --backup ${bad}`);
    expect(JSON.parse(other.stdout)).toMatchObject({ base: good });
    // Its own volume: no readable base, so a full read.
    const own = cli([...offline(2, repo, 'vm1', ['--json'])]);
    expect(own.status).toBe(0);
    expect(oneLine(own.stderr)).toContain(warning);
    expect(JSON.parse(own.stdout)).toMatchObject({ base: null, chunksRead: dev2.size });
    const full = cli([...offline(2, repo, 'vm1', ['--full', '-q'])]);
    expect(full.status).toBe(0);
  });

  test('backups list prints the readable ones, then exits 1 naming the damaged one', () => {
    for (const extra of [[], ['--volume', 'other'], ['--json']]) {
      const r = cli(['backups', 'list', '--repo', repo, ...extra]);
      expect(r.status).toBe(1);
      expect(r.stdout).toContain(good);
      expect(r.stdout).not.toContain(bad);
      const line = oneLine(r.stderr);
      expect(line).toMatch(new RegExp(`^dmthin backups list: backup ${bad} cannot be read \\(.*checksum mismatch.*readable backups? (is|are) listed.*dmthin backups delete --repo ${repo} --backup ${bad}.*\\[EBADMSG\\]$`));
    }
  });

  test('backups prune refuses, nothing deleted, naming it and backups delete', () => {
    const before = listed(repo);
    const r = cli(['backups', 'prune', '--repo', repo, '--keep-last', '1', '--volume', 'other']);
    expect(r.status).toBe(1);
    const line = oneLine(r.stderr);
    expect(line).toContain(`backup ${bad} cannot be read`);
    expect(line).toContain('nothing was deleted');
    expect(line).toContain(`dmthin backups delete --repo ${repo} --backup ${bad}`);
    expect(listed(repo)).toEqual(before);
  });
});

test("a damaged map of the volume's newest backup: the incremental backup's error says --full works and backups delete removes it", () => {
  const repo = s.path('map-repo');
  expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
  const a = cli([...offline(1, repo, 'vm1', ['--json'])]);
  const id = JSON.parse(a.stdout).id;
  flip(join(repo, 'maps', id));
  const r = cli(offline(2, repo, 'vm1'));
  expect(r.status).toBe(1);
  const line = oneLine(r.stderr);
  expect(line).toMatch(/^dmthin backup: .*\[EBADMSG\]$/);
  expect(line).toContain('take a full backup (--full)');
  expect(line).toContain(`dmthin backups delete --repo ${repo} --backup ${id}`);
  expect(cli(offline(2, repo, 'vm1', ['--full', '-q'])).status).toBe(0);
});

test('a FIFO or a link to /dev/zero in place of a chunk: verify --data and restore end at once, exit 1 naming it as damaged', async () => {
  const { loc, ids } = await makeRepo('fifo', ['vol'], 1);
  const dirs = readdirSync(join(loc, 'chunks'));
  const [a, b] = [0, 1].map((k) => {
    const d = dirs.length > 1 ? dirs[k] : dirs[0];
    return join(loc, 'chunks', d, readdirSync(join(loc, 'chunks', d))[dirs.length > 1 ? 0 : k]);
  });
  rmSync(a);
  spawnSync('mkfifo', [a]);
  rmSync(b);
  symlinkSync('/dev/zero', b);
  const v = cli(['backups', 'verify', '--repo', loc, '--data', '-q'], { timeout: 20_000 });
  expect(v.status).toBe(1);
  expect(oneLine(v.stderr)).toMatch(/^dmthin backups verify: 2 problems found; .* is corrupt; .* --data --repair removes the damaged ones, .*\[EBADMSG\]$/);
  const r = cli(['restore', '--repo', loc, '--backup', ids.vol[0], '--target', s.path('fifo.img'), '--create', '-q'], { timeout: 20_000 });
  expect(r.status).toBe(1);
  expect(oneLine(r.stderr)).toMatch(/in the local repository is (a FIFO|a symbolic link), not a regular file; the object is damaged or was replaced.*\[EBADMSG\]$/);
});

test('backups init --repo FILE: ENOTDIR naming the file, not EIO', () => {
  writeFileSync(s.path('a-file'), 'x');
  const r = cli(['backups', 'init', '--repo', s.path('a-file')]);
  expect(r.status).toBe(1);
  expect(oneLine(r.stderr)).toMatch(new RegExp(`^dmthin backups init: .*${s.path('a-file')} is not a directory; the repository must be a directory.*\\[ENOTDIR\\]$`));
});

describe('a report that cannot be written (stdout /dev/full) says the work stands', () => {
  const full = () => openSync('/dev/full', 'w');
  test('backups init: the repository was created', () => {
    const repo = s.path('full-init');
    const r = cli(['backups', 'init', '--repo', repo, '--json'], { stdout: full() });
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(new RegExp(`^dmthin backups init: .*; the unencrypted repository ${repo} was created: only its report was lost \\[ENOSPC\\]$`));
    expect(existsSync(join(repo, 'config'))).toBe(true);
  });

  test('backups prune: its deletions', async () => {
    const { loc, ids } = await makeRepo('full-prune', ['vol'], 3);
    const r = cli(['backups', 'prune', '--repo', loc, '--keep-last', '1', '--json'], { stdout: full() });
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/; prune deleted 2 backups and 6 chunks: only its report was lost \[ENOSPC\]$/);
    expect(listed(loc)).toEqual([ids.vol[2]]);
  });

  test('backups delete: the backup was deleted', async () => {
    const { loc, ids } = await makeRepo('full-delete', ['vol'], 2);
    const r = cli(['backups', 'delete', '--repo', loc, '--backup', ids.vol[0]], { stdout: full() });
    expect(r.status).toBe(1);
    expect(oneLine(r.stderr)).toMatch(new RegExp(`; backup ${ids.vol[0]} was deleted: only its report was lost \\[ENOSPC\\]$`));
    expect(listed(loc)).toEqual([ids.vol[1]]);
  });
});

test('backups list and prune --volume with a name no volume can have: exit 1 naming it, as backup', async () => {
  const { loc, ids } = await makeRepo('bad-volume', ['vol'], 2);
  for (const cmd of [['list'], ['prune', '--keep-last', '1']]) {
    const r = cli(['backups', ...cmd, '--repo', loc, '--volume', 'bad/name']);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toMatch(new RegExp(`^dmthin backups ${cmd[0]}: invalid volume name "bad/name": .*\\[EINVAL\\]$`));
  }
  expect(listed(loc)).toEqual([...ids.vol].sort());
});

test('a damaged journal segment: backup and prune go on, each with one warning line naming it', async () => {
  const { loc } = await makeRepo('journal', ['vm1'], 1);
  {
    await using repo = await Repository.open(loc);
    const ss = await repo.beginBackup('vm1');
    await ss.putChunk(content(900));
    await ss.putChunk(content(901));
    await ss[Symbol.asyncDispose](); // interrupted: its journal stays
  }
  // (the committed session's directory is left empty)
  const sessionDir = readdirSync(join(loc, 'journals', 'vm1')).find((d) => readdirSync(join(loc, 'journals', 'vm1', d)).length > 0)!;
  const seg = join('journals', 'vm1', sessionDir, readdirSync(join(loc, 'journals', 'vm1', sessionDir))[0]);
  flip(join(loc, seg));
  const b = cli(offline(1, loc, 'vm1', ['-q']));
  expect(b.status).toBe(0);
  expect(oneLine(b.stderr)).toMatch(new RegExp(`^dmthin backup: warning: a journal segment of an interrupted backup of vm1 cannot be read \\(${seg}: checksum mismatch.*uploaded again where missing$`));
  const p = cli(['backups', 'prune', '--repo', loc, '--keep-last', '1', '--json']);
  expect(p.status).toBe(0);
  expect(oneLine(p.stderr)).toMatch(new RegExp(`^dmthin backups prune: warning: a journal segment of an interrupted backup cannot be read \\(${seg}: checksum mismatch.*uploads them again$`));
  expect(JSON.parse(p.stdout).deletedChunks).toBe(5); // the first backup's 3 and the journal's 2
});

test('backups verify: a backup whose map is damaged is named with how to delete it', async () => {
  const { loc, ids } = await makeRepo('verify-map', ['vol'], 2);
  flip(join(loc, 'maps', ids.vol[1]));
  const r = cli(['backups', 'verify', '--repo', loc]);
  expect(r.status).toBe(1);
  const line = oneLine(r.stderr);
  expect(line).toMatch(new RegExp(`^dmthin backups verify: 1 problem found; the first: backup ${ids.vol[1]}, its manifest is \\S+; it cannot be restored: delete it with dmthin backups delete --repo \\S+ --backup ${ids.vol[1]}, or restore its files from a copy \\[EBADMSG\\]$`));
  // --json: the problem has no chunk, so no index, offset or id: null (docs/json.md), not -1 and '' (found by an outside hunt).
  const j = cli(['backups', 'verify', '--repo', loc, '--json']);
  expect(j.status).toBe(1);
  expect(JSON.parse(j.stdout).problems).toEqual([{ backup: ids.vol[1], index: null, offset: null, id: null, reason: expect.stringMatching(/^(corrupt|missing)$/) }]);
});

test('a damaged chunk: verify --data --repair removes it, the next --full backup stores it again, and every backup naming it restores whole (found by an outside hunt)', () => {
  const repo = s.path('heal-repo');
  expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
  const first = JSON.parse(cli(offline(2, repo, 'vm1', ['--json', '-q'])).stdout).id as string;
  const want = deviceBytes(pool, 2, SIZE);
  const restore = (id: string, name: string) => cli(['restore', '--repo', repo, '--backup', id, '--target', s.path(name), '--create', '-q']);
  // Damage one chunk that holds data (the largest file: not the all-zero chunk).
  const files = readdirSync(join(repo, 'chunks')).flatMap((d) => readdirSync(join(repo, 'chunks', d)).map((f) => join(repo, 'chunks', d, f)));
  const victim = files.sort((a, b) => readFileSync(b).length - readFileSync(a).length)[0];
  const victimId = victim.slice(victim.lastIndexOf('/') + 1);
  flip(victim);
  const v = cli(['backups', 'verify', '--repo', repo, '--data', '-q']);
  expect(v.status).toBe(1);
  expect(oneLine(v.stderr)).toContain(`dmthin backups verify --repo ${repo} --data --repair removes the damaged ones, then the next dmthin backup`);
  // A full backup alone cannot heal it: the chunk is present, so it is not stored again (restore says what to do).
  const second = JSON.parse(cli(offline(2, repo, 'vm1', ['--full', '--json', '-q'])).stdout).id as string;
  const r2 = restore(second, 'heal-2.img');
  expect(r2.status).toBe(1);
  expect(oneLine(r2.stderr)).toContain('dmthin backups verify --data --repair removes damaged chunks; the next dmthin backup of a snapshot that still holds that data then stores it again');
  expect(cli(['backups', 'verify', '--repo', repo, '--repair', '-q']).status).toBe(1); // --repair needs --data
  expect(existsSync(victim)).toBe(true);
  const rep = cli(['backups', 'verify', '--repo', repo, '--data', '--repair', '-q']);
  expect(rep.status).toBe(1);
  expect(rep.stdout).toContain(`removed damaged chunk ${victimId}\n`);
  expect(rep.stdout).toContain('repair: 1 damaged chunk removed, 0 kept');
  expect(oneLine(rep.stderr)).toContain('(now removed); the backups naming it cannot be restored whole');
  expect(existsSync(victim)).toBe(false);
  const third = JSON.parse(cli(offline(2, repo, 'vm1', ['--full', '--json', '-q'])).stdout);
  expect(third.chunksNew).toBe(1);
  expect(cli(['backups', 'verify', '--repo', repo, '--data', '-q']).status).toBe(0);
  for (const [id, name] of [[first, 'heal-1.img'], [second, 'heal-2b.img'], [third.id as string, 'heal-3.img']]) {
    expect(restore(id, name).status).toBe(0);
    expect(readFileSync(s.path(name)).equals(want)).toBe(true);
  }
});

test('after verify --repair, the next backup (an incremental, not --full) takes no base naming the removed chunk: it stores it again, and every backup restores whole (hunt N item 3: it exited 0 and could not be restored)', () => {
  const repo = s.path('heal-incr-repo');
  expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
  const first = JSON.parse(cli(offline(2, repo, 'vm1', ['--json', '-q'])).stdout).id as string;
  const want = deviceBytes(pool, 2, SIZE);
  const files = readdirSync(join(repo, 'chunks')).flatMap((d) => readdirSync(join(repo, 'chunks', d)).map((f) => join(repo, 'chunks', d, f)));
  const victim = files.sort((a, b) => readFileSync(b).length - readFileSync(a).length)[0];
  const victimId = victim.slice(victim.lastIndexOf('/') + 1);
  flip(victim);
  expect(cli(['backups', 'verify', '--repo', repo, '--data', '--repair', '-q']).status).toBe(1);
  expect(existsSync(victim)).toBe(false);
  expect(existsSync(join(repo, 'removed', victimId))).toBe(true);
  // The snapshot is unchanged: an incremental over the first backup would read nothing and copy the hole.
  const b = cli(offline(2, repo, 'vm1', ['--json', '-q']));
  expect(b.status).toBe(0);
  expect(oneLine(b.stderr)).toBe(`dmthin backup: warning: backup ${first} names a chunk that verify --repair removed: not used as a base (this backup reads what it needs itself, and stores such chunks again where its data still holds them, which makes the backups naming them whole again)`);
  const second = JSON.parse(b.stdout);
  expect(second.base).toBeNull();
  expect(second.chunksNew).toBe(1);
  expect(existsSync(join(repo, 'removed', victimId))).toBe(false); // stored again: the marker is gone
  expect(cli(['backups', 'verify', '--repo', repo, '--data', '-q']).status).toBe(0);
  for (const [id, name] of [[first, 'heal-incr-1.img'], [second.id as string, 'heal-incr-2.img']]) {
    expect(cli(['restore', '--repo', repo, '--backup', id, '--target', s.path(name), '--create', '-q']).status).toBe(0);
    expect(readFileSync(s.path(name)).equals(want)).toBe(true);
  }
  // And the next one is an increment again.
  const third = JSON.parse(cli(offline(2, repo, 'vm1', ['--json', '-q'])).stdout);
  expect(third.base).toBe(second.id);
});

test('removeDamagedChunks: a chunk that reads sound again is kept; an absent one is said; not a chunk id refuses before anything', async () => {
  const { loc } = await makeRepo('heal-api', ['vol'], 1);
  await using repo = await Repository.open(loc);
  const d = readdirSync(join(loc, 'chunks'))[0];
  const id = readdirSync(join(loc, 'chunks', d))[0];
  await expect(repo.removeDamagedChunks([id, 'f'.repeat(64)])).resolves.toEqual({ removed: [], sound: [id], absent: ['f'.repeat(64)] });
  await expect(repo.removeDamagedChunks(['nope'])).rejects.toMatchObject({ name: 'RepoError', reason: 'config', code: 'EINVAL' });
  expect(existsSync(join(loc, 'chunks', d, id))).toBe(true);
});

test('restore onto a file smaller than the device: exit 1 naming --create and the size needed, the file untouched (found by an outside hunt)', () => {
  const repo = s.path('small-repo');
  expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
  const id = JSON.parse(cli(offline(1, repo, 'vm1', ['--json', '-q'])).stdout).id as string;
  const small = s.path('small.img');
  writeFileSync(small, Buffer.alloc(4096, 7));
  const r = cli(['restore', '--repo', repo, '--backup', id, '--target', small, '-q']);
  expect(r.status).toBe(1);
  expect(oneLine(r.stderr)).toBe(`dmthin restore: target ${small} is 4096 bytes, backup ${id}'s device is ${SIZE} bytes: --create grows the file, or give a target of at least ${SIZE} bytes [ENOSPC]`);
  expect(readFileSync(small).equals(Buffer.alloc(4096, 7))).toBe(true);
});
