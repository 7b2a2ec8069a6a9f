/**
 * Encrypted repositories: keyed chunk ids (no object name is a plaintext
 * SHA-256), nothing stored holds plaintext, and a wrong or missing key or
 * passphrase is refused before anything is written (every file unchanged).
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { basename, join } from 'node:path';
import { createKeyFile } from '../../src/repo/keys';
import { Repository, type KeySource } from '../../src/repo/repository';
import { scratchDir } from './scratch';

let dir: string;
beforeEach(() => {
  dir = scratchDir('dmthin-enc-');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const FAST = { N: 1 << 14, r: 8, p: 1 }; // the least create takes (docs/repository.md §4)

function filesUnder(d: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out.sort();
}

/** Every file's name, bytes and mtime: what "nothing was written" is checked against. */
function snapshot(d: string): string {
  return filesUnder(d)
    .map((p) => `${p} ${statSync(p).mtimeMs} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`)
    .join('\n');
}

async function populate(loc: string, key: KeySource, plains: Buffer[]): Promise<string> {
  const repo = await Repository.create(loc, { key, scrypt: FAST });
  expect(repo.encrypted).toBe(true);
  const s = await repo.beginBackup('secret-volume');
  const entries = [];
  for (const [i, p] of plains.entries()) entries.push({ index: i, id: (await s.putChunk(p)).id });
  const sum = await s.commit({ volume: 'secret-volume', deviceSize: plains.length * 4096, chunkSize: 4096, createdMs: 5, source: { host: 'visible-host-name' }, base: null }, entries);
  await repo.close();
  return sum.id;
}

describe('encrypted repository', () => {
  const plains = [Buffer.alloc(4096, 0), Buffer.from('plaintext marker '.repeat(241).slice(0, 4096)), randomBytes(4096)];

  it.each([
    ['key file', true],
    ['passphrase', false],
  ])('with a %s: ids are keyed, names and bytes reveal nothing, the right key reads everything back', async (_n, useFile) => {
    const loc = join(dir, 'repo');
    let key: KeySource = { passphrase: 'correct horse' };
    if (useFile) {
      await createKeyFile(join(dir, 'key'));
      expect(statSync(join(dir, 'key')).mode & 0o777).toBe(0o600);
      key = { keyFile: join(dir, 'key') };
    }
    const backup = await populate(loc, key, plains);
    const names = filesUnder(loc).map((p) => p.slice(loc.length + 1)).join('\n');
    for (const p of plains) expect(names).not.toContain(createHash('sha256').update(p).digest('hex'));
    for (const f of filesUnder(loc)) {
      const b = readFileSync(f);
      expect(b.includes(Buffer.from('plaintext marker'))).toBe(false);
      expect(b.includes(Buffer.from('visible-host-name'))).toBe(false);
      expect(b.includes(Buffer.from('secret-volume'))).toBe(false);
    }
    const repo = await Repository.open(loc, { key });
    const m = await repo.readManifest(backup);
    expect(m.header.volume).toBe('secret-volume');
    const ids: string[] = [];
    for await (const e of m.entries) ids.push(e.id);
    expect(ids).toHaveLength(3);
    for (const [i, id] of ids.entries()) {
      expect((await repo.getChunk(id)).equals(plains[i]!)).toBe(true);
      expect(repo.chunkId(plains[i]!)).toBe(id);
      // Not a hash an outsider could compute: neither SHA-256 nor an HMAC under the user's secret.
      expect(id).not.toBe(createHash('sha256').update(plains[i]!).digest('hex'));
      if (useFile) expect(id).not.toBe(createHmac('sha256', readFileSync(join(dir, 'key'))).update(plains[i]!).digest('hex'));
    }
    expect((await repo.verify({ data: true })).problems).toEqual([]);
    await repo.close();
  });

  it('journal and lock names of a running session reveal neither the volume nor chunk hashes', async () => {
    const loc = join(dir, 'repo');
    const repo = await Repository.create(loc, { key: { passphrase: 'pw' }, scrypt: FAST });
    const s = await repo.beginBackup('secret-volume');
    for (const p of plains) await s.putChunk(p);
    await s[Symbol.asyncDispose](); // interrupted: the journal stays
    const names = filesUnder(loc).map((p) => p.slice(loc.length + 1));
    expect(names.some((n) => n.startsWith('journals/'))).toBe(true);
    expect(names.join('\n')).not.toContain('secret');
    for (const p of plains) expect(names.join('\n')).not.toContain(createHash('sha256').update(p).digest('hex'));
    const again = await repo.beginBackup('secret-volume');
    expect(again.resumedIds.size).toBe(3);
    await again[Symbol.asyncDispose]();
    await repo.close();
  });

  it('a key file\'s temporary file left by a killed run is removed by the next; a live run\'s and other names stay (outside hunt G: a SIGKILL of backups init --key-file left a stray key beside it for good)', async () => {
    const gone = spawnSync(process.execPath, ['-e', '0']).pid!; // a process id that has ended
    const running = spawn('sleep', ['60']); // another process, alive
    try {
      const dead = join(dir, `.key.dmthin-${gone}-0123abcd.tmp`);
      const live = join(dir, `.key.dmthin-${running.pid}-89abcdef.tmp`);
      const other = join(dir, `.key.dmthin-${gone}-notours.tmp`);
      for (const f of [dead, live, other]) writeFileSync(f, randomBytes(32), { mode: 0o600 });
      await createKeyFile(join(dir, 'key'));
      expect(readdirSync(dir).sort()).toEqual([basename(other), basename(live), 'key'].sort());
    } finally {
      running.kill();
    }
  });

  it('the same key file on two repositories gives different ids (ids are per repository)', async () => {
    await createKeyFile(join(dir, 'key'));
    const key = { keyFile: join(dir, 'key') };
    const a = await Repository.create(join(dir, 'a'), { key });
    const b = await Repository.create(join(dir, 'b'), { key });
    expect(a.chunkId(plains[1]!)).not.toBe(b.chunkId(plains[1]!));
    await a.close();
    await b.close();
  });

  it('a wrong or missing passphrase or key file is refused with bad-key before anything is written', async () => {
    const loc = join(dir, 'repo');
    await populate(loc, { passphrase: 'right' }, plains);
    await createKeyFile(join(dir, 'other'));
    const before = snapshot(loc);
    for (const key of [{ passphrase: 'wrong' }, { passphrase: 'Right' }, { keyFile: join(dir, 'other') }, undefined, {}]) {
      await expect(Repository.open(loc, { key })).rejects.toMatchObject({ reason: 'bad-key', code: 'EACCES' });
    }
    await expect(Repository.create(loc, { key: { passphrase: 'wrong' } })).rejects.toMatchObject({ reason: 'exists' });
    expect(snapshot(loc)).toBe(before);
  });

  it('a wrong key file is refused for a key-file repository, and the config records the scrypt parameters', async () => {
    await createKeyFile(join(dir, 'k1'));
    await createKeyFile(join(dir, 'k2'));
    await expect(createKeyFile(join(dir, 'k1'))).rejects.toMatchObject({ reason: 'exists' });
    const loc = join(dir, 'repo');
    await populate(loc, { keyFile: join(dir, 'k1') }, plains);
    const before = snapshot(loc);
    await expect(Repository.open(loc, { key: { keyFile: join(dir, 'k2') } })).rejects.toMatchObject({ reason: 'bad-key' });
    await expect(Repository.open(loc, { key: { passphrase: 'x' } })).rejects.toMatchObject({ reason: 'bad-key' });
    expect(snapshot(loc)).toBe(before);
    // A key file written as 64 hex digits opens it too.
    writeFileSync(join(dir, 'hex'), `${readFileSync(join(dir, 'k1')).toString('hex')}\n`);
    await (await Repository.open(loc, { key: { keyFile: join(dir, 'hex') } })).close();

    const ploc = join(dir, 'p');
    await (await Repository.create(ploc, { key: { passphrase: 'pw' }, scrypt: FAST })).close();
    const cfg = JSON.parse(JSON.parse(readFileSync(join(ploc, 'config'), 'utf8')).body);
    expect(cfg.encryption.kdf).toMatchObject({ name: 'scrypt', ...FAST });
  });

  it('a config altered after creation is refused (corrupt), not silently used', async () => {
    const loc = join(dir, 'repo');
    await populate(loc, { passphrase: 'pw' }, plains);
    const outer = JSON.parse(readFileSync(join(loc, 'config'), 'utf8'));
    const body = JSON.parse(outer.body);
    body.compression = 'none';
    writeFileSync(join(loc, 'config'), JSON.stringify({ body: JSON.stringify(body), mac: outer.mac }));
    await expect(Repository.open(loc, { key: { passphrase: 'pw' } })).rejects.toMatchObject({ reason: 'corrupt' });
  });

  // The scrypt parameters are used before the config can be authenticated
  // (the MAC needs the key they derive): out of bounds, they are damage, told
  // at once, not 1 TiB of scrypt memory asked for nor a wrong-passphrase line.
  it.each([
    ['N 2^30', { N: 2 ** 30 }, /128·N·r bytes of memory, at most 1 GiB/],
    ['N 2^21 at r 8', { N: 2 ** 21 }, /at most 1 GiB/],
    ['r 2^20', { r: 2 ** 20 }, /at most 1 GiB/],
    ['p 2^20', { p: 2 ** 20 }, /scrypt.p must be at most 16/],
    ['N 3', { N: 3 }, /scrypt.N must be a power of two/],
    ['r 0', { r: 0 }, /scrypt.r must be an integer of at least 1/],
    ['p "1"', { p: '1' }, /scrypt.p must be an integer of at least 1, got string "1"/],
    ['an unknown derivation', { name: 'argon2' }, /key derivation "argon2"/],
  ])('stored scrypt parameters out of bounds (%s): corrupt, at once', async (_n, change, message) => {
    const loc = join(dir, 'repo');
    await populate(loc, { passphrase: 'pw' }, plains);
    const outer = JSON.parse(readFileSync(join(loc, 'config'), 'utf8'));
    const body = JSON.parse(outer.body);
    Object.assign(body.encryption.kdf, change);
    writeFileSync(join(loc, 'config'), JSON.stringify({ body: JSON.stringify(body), mac: outer.mac }));
    const before = snapshot(loc);
    const t0 = Date.now();
    await expect(Repository.open(loc, { key: { passphrase: 'pw' } })).rejects.toMatchObject({ reason: 'corrupt', message: expect.stringMatching(message) });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(snapshot(loc)).toBe(before);
  });
});
