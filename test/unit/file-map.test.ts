/**
 * native/file_map.cc: a file's bytes as a string or a Uint8Array without a
 * copy, or a string of bytes read into memory of its own (the CLI's module
 * pack, src/cli/startup.ts). Each is what the file
 * holds at any offset, outlives its descriptor, is unmapped once
 * collected, and is null (never a wrong value) where it cannot be made.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addonFile, fileMapFunctions } from '../../src/native/addon-file';
import { native } from '../../src/native/binding';

const ROOT = join(__dirname, '..', '..');

/** Runs `script` in a Node process of its own with gc() and the addon's file functions required as named; its stdout as JSON. */
function inChild(names: string, script: string): unknown {
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', `const { ${names} } = require(${JSON.stringify(addonFile(ROOT))}); const fs = require('fs');\n${script}`], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout);
}
const dir = mkdtempSync(join(tmpdir(), 'dmthin-file-map-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 3 pages and a bit of ASCII: 'a'..'z' and newlines, so that offsets are told apart. */
const ascii = Buffer.from(Array.from({ length: 3 * 4096 + 123 }, (_, i) => (i % 27 === 26 ? 0x0a : 0x61 + (i % 27))));
const file = join(dir, 'ascii');
writeFileSync(file, ascii);

function withFd<T>(path: string, f: (fd: number) => T): T {
  const fd = openSync(path, 'r');
  try {
    return f(fd);
  } finally {
    closeSync(fd);
  }
}

describe('mapAscii, readAscii and mapBytes', () => {
  const { mapAscii, mapBytes, readAscii } = native();

  it.each([
    [0, ascii.length],
    [1, 100],
    [4095, 2],
    [4096, 4096],
    [5000, ascii.length - 5000],
    [ascii.length - 1, 1],
  ])('bytes [%i, +%i) are what the file holds there, also once its descriptor is closed', (offset, length) => {
    const [s, r, b] = withFd(file, (fd) => [mapAscii(fd, offset, length), readAscii(fd, offset, length), mapBytes(fd, offset, length)] as const);
    expect(s).toBe(ascii.toString('latin1', offset, offset + length));
    expect(r).toBe(s);
    expect(b).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(b!).equals(ascii.subarray(offset, offset + length))).toBe(true);
  });

  it('null where no mapping can be made: length 0, a range past the end, a directory', () => {
    withFd(file, (fd) => {
      for (const [o, n] of [
        [0, 0],
        [0, ascii.length + 1],
        [ascii.length, 1],
        [ascii.length + 4096, 1],
      ]) {
        expect(mapAscii(fd, o, n)).toBeNull();
        expect(readAscii(fd, o, n)).toBeNull();
        expect(mapBytes(fd, o, n)).toBeNull();
      }
    });
    withFd(dir, (fd) => {
      expect(mapAscii(fd, 0, 1)).toBeNull();
      expect(readAscii(fd, 0, 1)).toBeNull();
      expect(mapBytes(fd, 0, 1)).toBeNull();
    });
  });

  it('mapAscii and readAscii: null for bytes of 0x80 and more wherever they are (Latin-1 would not read them as UTF-8 does); mapBytes maps them', () => {
    for (const at of [0, 7, 8, 4095, 4096, ascii.length - 1]) {
      const b = Buffer.from(ascii);
      b[at] = at % 2 ? 0xe2 : 0x80;
      const f = join(dir, `high-${at}`);
      writeFileSync(f, b);
      withFd(f, (fd) => {
        expect(mapAscii(fd, 0, b.length)).toBeNull();
        expect(readAscii(fd, 0, b.length)).toBeNull();
        // Around the byte, the rest maps.
        if (at > 0) expect(mapAscii(fd, 0, at)).toBe(b.toString('latin1', 0, at));
        if (at > 0) expect(readAscii(fd, 0, at)).toBe(b.toString('latin1', 0, at));
        expect(Buffer.from(mapBytes(fd, 0, b.length)!).equals(b)).toBe(true);
        // checked (the caller found them ASCII, as start-up does on the bytes it checks): not scanned again, any byte its Latin-1 character.
        expect(mapAscii(fd, 0, b.length, true)).toBe(b.toString('latin1'));
        expect(readAscii(fd, 0, b.length, true)).toBe(b.toString('latin1'));
        expect(mapAscii(fd, 0, b.length, false)).toBeNull();
      });
    }
  });

  it("statFile: size, Node's ctimeMs to the bit and whether a regular file, following links; false for what cannot be stat'ed; a TypeError for bad arguments", () => {
    const { statFile } = native();
    const out = new Float64Array(3);
    const f = join(dir, 'stat-me');
    writeFileSync(f, 'x'.repeat(12345));
    const link = join(dir, 'stat-link');
    rmSync(link, { force: true });
    symlinkSync(f, link);
    for (const p of [f, link, dir, '/etc/passwd', process.execPath]) {
      expect(statFile(p, out)).toBe(true);
      const st = statSync(p);
      expect([...out]).toEqual([st.size, st.ctimeMs, st.isFile() ? 1 : 0]);
    }
    out.fill(-1);
    expect(statFile(join(dir, 'no-such-file'), out)).toBe(false);
    expect(statFile(`${f}\0x`, out)).toBe(false);
    expect([...out]).toEqual([-1, -1, -1]);
    const bad = (...a: unknown[]) => {
      try {
        (statFile as (...a: unknown[]) => boolean)(...a);
      } catch (e) {
        return `${(e as Error).name}: ${(e as Error).message}`;
      }
      return 'no error';
    };
    for (const args of [[f, new Float64Array(2)], [f, new Float32Array(3)], [1, out], [f]]) expect(bad(...args)).toBe('TypeError: statFile(path: string, out: Float64Array of 3 or more)');
  });

  it.each([
    [[], 'TypeError'],
    [['3', 0, 1], 'TypeError'],
    [[-1, 0, 1], 'RangeError'],
    [[3, 0.5, 1], 'RangeError'],
    [[3, 0, -1], 'RangeError'],
    [[3, 0, 2 ** 53], 'RangeError'],
  ])('refuses bad arguments %j (%s)', (args, name) => {
    for (const f of [mapAscii, readAscii, mapBytes] as unknown as ((...a: unknown[]) => unknown)[]) expect(() => f(...args)).toThrow(expect.objectContaining({ name }));
  });

  it('a descriptor that is not open gives null', () => {
    // The largest number the calls take: never open (a closed one could be reused by another thread meanwhile).
    expect(mapAscii(2147483647, 0, 10)).toBeNull();
    expect(readAscii(2147483647, 0, 10)).toBeNull();
    expect(mapBytes(2147483647, 0, 10)).toBeNull();
  });

  it('a file renamed over the mapped one (as dmthin replaces its packs): the mapping still reads the bytes it mapped', () => {
    const f = join(dir, 'renamed');
    writeFileSync(f, ascii);
    const [s, b] = withFd(f, (fd) => [mapAscii(fd, 100, 5000), mapBytes(fd, 100, 5000)] as const);
    writeFileSync(`${f}.new`, Buffer.alloc(ascii.length, 0x7a));
    renameSync(`${f}.new`, f);
    expect(s).toBe(ascii.toString('latin1', 100, 5100));
    expect(Buffer.from(b!).equals(ascii.subarray(100, 5100))).toBe(true);
  });

  it("readAscii: the bytes as read, whatever happens to the file later (truncated or rewritten in place: mapAscii's string would SIGBUS or change); its memory freed once collected", () => {
    // A process of its own: a fault there must not end this one; gc() for the memory.
    const f = join(dir, 'read-then-truncated');
    const big = Buffer.alloc(1 << 20, 0x61);
    ascii.copy(big, 4096);
    writeFileSync(f, big);
    const out = inChild(
      'readAscii',
      `const rss = () => +fs.readFileSync("/proc/self/status", "utf8").match(/VmRSS:\\s+(\\d+)/)[1];
         const fd = fs.openSync(${JSON.stringify(f)}, 'r+');
         const s = readAscii(fd, 4096, ${ascii.length});
         let keep = [];
         for (let i = 0; i < 50; i++) keep.push(readAscii(fd, 0, ${big.length}));
         fs.ftruncateSync(fd, 0);
         fs.writeSync(fd, Buffer.alloc(8192, 0x7a), 0, 8192, 0);
         fs.closeSync(fd);
         const same = s === ${JSON.stringify(ascii.toString('latin1'))} && keep.every((x) => x.length === ${big.length} && x.charCodeAt(${big.length - 1}) === 0x61);
         const held = rss();
         keep = null;
         let turns = 0;
         const turn = () => { gc(); const freed = held - rss(); if (freed >= 45 * 1024 || ++turns === 50) console.log(JSON.stringify({ same, freed })); else setTimeout(turn, 10); };
         turn();`,
    );
    const { same, freed } = out as { same: boolean; freed: number };
    expect(same).toBe(true);
    expect(freed).toBeGreaterThanOrEqual(45 * 1024); // KiB: 50 strings of 1 MiB
  });

  it('readAscii from 128 KiB up: the copy is in memory marked for huge pages (a fresh 4 KiB page cost ~12 us in the bench VM), holds the bytes, and is freed once collected', () => {
    // A process of its own: its huge-page mappings ("hg" in smaps' VmFlags) counted before and after.
    const f = join(dir, 'read-huge');
    const big = Buffer.from(Array.from({ length: 300_000 }, (_, i) => 0x20 + (i % 95)));
    writeFileSync(f, big);
    const out = inChild(
      'readAscii',
      `const marked = () => fs.readFileSync('/proc/self/smaps', 'utf8').split('\\n').filter((l) => /^VmFlags:/.test(l) && / hg\\b/.test(l)).length;
         const fd = fs.openSync(${JSON.stringify(f)}, 'r');
         const before = marked();
         let small = readAscii(fd, 0, 100_000);
         const afterSmall = marked();
         let s = readAscii(fd, 1000, 200_000);
         const after = marked();
         const same = s === fs.readFileSync(${JSON.stringify(f)}, 'latin1').slice(1000, 201_000) && small.length === 100_000;
         fs.closeSync(fd);
         s = null; small = null;
         let turns = 0;
         const turn = () => { gc(); if (marked() === before || ++turns === 50) console.log(JSON.stringify({ small: afterSmall - before, big: after - afterSmall, same, freed: marked() === before })); else setTimeout(turn, 10); };
         turn();`,
    );
    // A kernel without transparent huge pages refuses the advice: nothing is marked.
    const thp = existsSync('/sys/kernel/mm/transparent_hugepage/enabled');
    expect(out).toEqual({ small: 0, big: thp ? 1 : 0, same: true, freed: true });
  });

  it('each mapping is gone from the process once its string or array is collected', () => {
    // A process of its own with gc(): the file's mappings counted in /proc/self/maps.
    const out = inChild(
      'mapAscii, mapBytes',
      `const count = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.endsWith(${JSON.stringify(file)})).length;
         const fd = fs.openSync(${JSON.stringify(file)}, 'r');
         let keep = [];
         for (let i = 0; i < 50; i++) keep.push(mapAscii(fd, i, 4000), mapBytes(fd, i, 4000));
         fs.closeSync(fd);
         const held = count();
         const sum = keep.reduce((n, x) => n + x.length, 0);
         keep = null;
         // Node runs the finalizers of external buffers a tick after the collection: a few turns of the loop.
         let turns = 0;
         const turn = () => { gc(); const after = count(); if (after === 0 || ++turns === 50) console.log(JSON.stringify({ held, sum, after })); else setTimeout(turn, 10); };
         turn();`,
    );
    const { held, sum, after } = out as { held: number; sum: number; after: number };
    expect(sum).toBe(100 * 4000);
    expect(held).toBe(100);
    expect(after).toBe(0);
  });
});

describe('fileMapFunctions (what the CLI start-up uses)', () => {
  it('finds the built addon and its three calls', () => {
    const f = fileMapFunctions(ROOT);
    expect(f).not.toBeNull();
    expect(f!.mapAscii).toBe(native().mapAscii);
    expect(f!.readAscii).toBe(native().readAscii);
  });

  it('null where no addon lies at build/, build/Debug or build/Release', () => {
    expect(fileMapFunctions(dir)).toBeNull();
  });
});
