/**
 * dmthin dump / ls against thin_dump / thin_ls 0.9.0 on every fixture: byte
 * for byte, the way a user runs them (child processes, exit codes).
 */
import { describeOracle, fixtureFile, fixtureImage, listFixtures, oraclePath, restoreFlat, runOracle, TempFile, largeImage, tempImage } from '../helpers/fixtures';
import { hashCli, hashOutput, runCli } from '../cli/run-cli';
import { createHash } from 'node:crypto';
import { PassThrough, Writable } from 'node:stream';
import { dump, ThinMetadata, writeDelta } from '../../src';
import { deviceUsage } from '../../src/thin/ls';

const ALL_LS_FIELDS =
  'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME';

/** Both succeed and print the same bytes (two failures with empty output would otherwise compare equal). */
function same(args: string[], refTool: string, refArgs: string[]) {
  const ours = runCli(args);
  const ref = runOracle(refTool, refArgs);
  expect({ status: ours.status, stdout: ours.stdout }).toEqual({ status: 0, stdout: ref.stdout });
  expect(ref.status).toBe(0);
  return ours;
}

const fixtures = listFixtures();

describeOracle('dump and ls equal thin_dump and thin_ls 0.9.0 on every fixture', () => {
  test('there are fixtures', () => expect(fixtures.length).toBeGreaterThanOrEqual(10));

  describe.each(fixtures.map((f) => [f.name, f] as const))('%s', (name, f) => {
    let img: TempFile;
    beforeAll(() => {
      img = fixtureFile(name);
    });
    afterAll(() => img.cleanup());

    test('dump (xml)', () => {
      const r = same(['dump', img.path], 'thin_dump', [img.path]);
      expect(r.status).toBe(0);
      expect(r.stderr).toBe('');
    });
    test('dump -f human_readable', () => {
      same(['dump', '-f', 'human_readable', img.path], 'thin_dump', ['-f', 'human_readable', img.path]);
    });
    test('dump --skip-mappings', () => {
      same(['dump', '--skip-mappings', img.path], 'thin_dump', ['--skip-mappings', img.path]);
    });
    test('dump --dev-id (first, last and an unknown id, repeated)', () => {
      const xml = runOracle('thin_dump', ['--skip-mappings', img.path]).stdout;
      const ids = [...xml.matchAll(/dev_id="(\d+)"/g)].map((m) => m[1]);
      const pick = ids.length ? [ids[ids.length - 1], ids[0]] : [];
      const args = [...pick.flatMap((id) => ['--dev-id', id]), '--dev-id', '4242'];
      same(['dump', ...args, img.path], 'thin_dump', [...args, img.path]);
    });
    test('ls (default fields)', () => {
      same(['ls', img.path], 'thin_ls', [img.path]);
    });
    test('ls -o every field, and --no-headers', () => {
      same(['ls', '-o', ALL_LS_FIELDS, img.path], 'thin_ls', ['-o', ALL_LS_FIELDS, img.path]);
      same(['ls', '--no-headers', '-o', 'DEV,SHARED,EXCLUSIVE_BYTES', img.path], 'thin_ls', ['--no-headers', '-o', 'DEV,SHARED,EXCLUSIVE_BYTES', img.path]);
    });
    test('EXCLUSIVE/SHARED by owner bytes, two-bit counts (two walks) and owner pages each equal thin_ls', async () => {
      const ref = runOracle('thin_ls', ['--no-headers', '-o', 'DEV,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', img.path]);
      expect(ref.status).toBe(0);
      const want = ref.stdout
        .trim()
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => l.trim().split(/\s+/).map(Number));
      for (const flatLimits of [undefined, { ownerBytes: 0, counts: 2 ** 40 }, { ownerBytes: 0, counts: 0 }]) {
        await using md = await ThinMetadata.open(img.path);
        const rows = await deviceUsage(md, { flatLimits });
        expect(rows.map((r) => [r.devId, r.exclusiveBlocks, r.sharedBlocks])).toEqual(want);
      }
    });
    test('our XML loads with thin_restore and dumps back identically', () => {
      const ours = runCli(['dump', img.path]);
      expect(ours.status).toBe(0);
      using xml = tempImage(Buffer.from(ours.stdout), 'dump.xml');
      using out = tempImage(Buffer.alloc(f.size), 'restored.bin');
      const r = runOracle('thin_restore', ['-q', '-i', xml.path, '-o', out.path]);
      expect(r.status).toBe(0);
      expect(runOracle('thin_dump', [out.path]).stdout).toBe(ours.stdout);
    });

    if (f.heldRoot) {
      const held = String(f.heldRoot);
      const trueNr = (s: string) => s.replace(/nr_data_blocks="0"/, `nr_data_blocks="${f.nrDataBlocks}"`);
      test('dump -m: equal except the documented nr_data_blocks', () => {
        const ours = runCli(['dump', '-m', img.path]);
        const ref = runOracle('thin_dump', ['-m', img.path]);
        expect(ref.stdout).toMatch(/nr_data_blocks="0"/);
        expect(ours.status).toBe(0);
        expect(ours.stdout).toBe(trueNr(ref.stdout));
        // ...and it really is the snapshot, not the live superblock.
        expect(ours.stdout).not.toBe(runCli(['dump', img.path]).stdout);
      });
      test('dump -f human_readable -m and --metadata-snap=BLOCK', () => {
        const hr = runOracle('thin_dump', ['-f', 'human_readable', '-m', img.path]).stdout;
        expect(runCli(['dump', '-f', 'human_readable', '-m', img.path]).stdout).toBe(
          hr.replace(/^(begin superblock: .*), 0$/m, `$1, ${f.nrDataBlocks}`),
        );
        expect(runCli(['dump', `--metadata-snap=${held}`, img.path]).stdout).toBe(trueNr(runOracle('thin_dump', [`--metadata-snap=${held}`, img.path]).stdout));
        expect(runCli(['dump', `-m${held}`, img.path]).stdout).toBe(trueNr(runOracle('thin_dump', [`-m${held}`, img.path]).stdout));
      });
      test('a block that is not the held root is refused, as thin_dump refuses it', () => {
        const wrong = String(f.heldRoot! + 1);
        const ours = runCli(['dump', `--metadata-snap=${wrong}`, img.path]);
        expect(runOracle('thin_dump', [`--metadata-snap=${wrong}`, img.path]).status).toBe(1);
        expect(ours.status).toBe(1);
        expect(ours.stderr).toMatch(/^dmthin dump: metadata snapshot at block \d+ does not match the held root \d+/);
        expect(ours.stdout).toBe('');
      });
      test('ls -m', () => {
        same(['ls', '-m', '-o', ALL_LS_FIELDS, img.path], 'thin_ls', ['-m', '-o', ALL_LS_FIELDS, img.path]);
      });
    } else {
      test('-m without a held snapshot fails as thin_dump does (exit 1)', () => {
        expect(runOracle('thin_dump', ['-m', img.path]).status).toBe(1);
        const ours = runCli(['dump', '-m', img.path]);
        expect(ours.status).toBe(1);
        expect(ours.stderr).toMatch(/^dmthin dump: no current metadata snapshot/);
        expect(ours.stderr.trim().split('\n')).toHaveLength(1);
      });
    }
  });
});

describeOracle('ranges whose end is at or near 2^53', () => {
  // A range ending at exactly 2^53 printed its end one short with exit 0: o + l - 1 rounded (outside hunt).
  test.each([
    ['ends at 2^53', '9007199254740991', 2],
    ['ends at 2^53 - 1', '9007199254740990', 2],
    ['ends at 2^53 + 1', '9007199254740991', 3],
    ['starts at 2^53', '9007199254740992', 2],
    ['ends at 2^53, long', '9007199254740000', 993],
  ])('%s: dump (xml, human_readable) equals thin_dump', (_name, begin, length) => {
    const xml = `<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="2000">
  <device dev_id="1" mapped_blocks="${length}" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="${begin}" data_begin="20" length="${length}" time="1"/>
  </device>
</superblock>
`;
    using img = restoreFlat(xml, 4 << 20, 'near-2p53');
    for (const f of ['xml', 'human_readable']) same(['dump', '-f', f, img.path], 'thin_dump', ['-f', f, img.path]);
  });
});

describeOracle('a generated image of at least 1,000,000 mappings', () => {
  let big: ReturnType<typeof largeImage>;
  beforeAll(() => {
    big = largeImage(1_000_000);
  }, 600_000);

  test('has at least 1M mappings and a multi-level tree', () => {
    expect(big.mappings).toBeGreaterThanOrEqual(1_000_000);
    expect(big.depth.bottomMax).toBeGreaterThanOrEqual(3);
  });

  test('dump equals thin_dump (sha256 of the whole output)', async () => {
    const [ours, ref] = await Promise.all([hashCli(['dump', '-q', big.path]), hashOutput(oraclePath('thin_dump')!, [big.path])]);
    expect(ours.status).toBe(0);
    expect(ours.bytes).toBeGreaterThan(1e6);
    expect(ours).toMatchObject({ sha256: ref.sha256, bytes: ref.bytes });
  }, 600_000);

  test('dump -f human_readable equals thin_dump', async () => {
    const [ours, ref] = await Promise.all([
      hashCli(['dump', '-q', '-f', 'human_readable', big.path]),
      hashOutput(oraclePath('thin_dump')!, ['-f', 'human_readable', big.path]),
    ]);
    expect(ours).toMatchObject({ status: 0, sha256: ref.sha256, bytes: ref.bytes });
  }, 600_000);

  test('ls with every field equals thin_ls', () => {
    same(['ls', '-q', '-o', ALL_LS_FIELDS, big.path], 'thin_ls', ['-o', ALL_LS_FIELDS, big.path]);
  }, 600_000);

  // Writables that keep the very Buffers they are given after calling back:
  // the sink used to reuse a chunk once its write callback ran, and rewrote
  // bytes these had already taken (the hashes differed from thin_dump's).
  const keepers: [string, () => { out: Writable; bytes: () => Buffer }][] = [
    [
      'a collector keeping every chunk',
      () => {
        const chunks: Buffer[] = [];
        const out = new Writable({ write: (c: Buffer, _e, cb) => (chunks.push(c), cb()) });
        return { out, bytes: () => Buffer.concat(chunks) };
      },
    ],
    [
      'a PassThrough read from its other side',
      () => {
        const chunks: Buffer[] = [];
        const out = new PassThrough();
        out.on('data', (c: Buffer) => chunks.push(c));
        return { out, bytes: () => Buffer.concat(chunks) };
      },
    ],
  ];
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

  test.each(keepers)('the library dump() into %s equals thin_dump', async (_name, make) => {
    const ref = await hashOutput(oraclePath('thin_dump')!, [big.path]);
    const md = await ThinMetadata.open(big.path);
    try {
      const k = make();
      await dump(md, k.out, { format: 'xml' });
      const b = k.bytes();
      expect({ bytes: b.length, sha256: sha(b) }).toEqual({ bytes: ref.bytes, sha256: ref.sha256 });
    } finally {
      await md.close();
    }
  }, 600_000);

  // A reader slower than the walk: what waits in the stream's queue stays a
  // few chunks. The XML writer made room for a leaf at a time, which handed
  // chunks over without ever waiting for 'drain': the queue held the output.
  const slowReader = () => {
    const chunks: Buffer[] = [];
    let most = 0;
    const out = new Writable({
      highWaterMark: 1 << 16,
      write: (c: Buffer, _e, cb) => {
        chunks.push(Buffer.from(c));
        setTimeout(cb, 0);
      },
    });
    const origWrite = out.write.bind(out) as (c: Buffer, cb?: (e?: Error | null) => void) => boolean;
    out.write = ((c: Buffer, cb?: (e?: Error | null) => void) => {
      const r = origWrite(c, cb);
      most = Math.max(most, out.writableLength);
      return r;
    }) as typeof out.write;
    return { out, bytes: () => Buffer.concat(chunks), most: () => most };
  };

  test.each(['xml', 'human_readable'] as const)('dump() as %s into a slow reader: at most 1 MiB queued, the output equals thin_dump', async (format) => {
    // Single mappings only: a leaf's room is then large enough that a chunk is never filled to the brim.
    const n = 200_000;
    const lines = Array.from({ length: n }, (_, i) => `    <single_mapping origin_block="${i}" data_block="${2 * i + 1}" time="0"/>`);
    const xml = `<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="${2 * n + 2}">
  <device dev_id="1" mapped_blocks="${n}" transaction="0" creation_time="0" snap_time="0">
${lines.join('\n')}
  </device>
</superblock>
`;
    using img = restoreFlat(xml, 16 << 20, 'singles');
    const ref = await hashOutput(oraclePath('thin_dump')!, ['-f', format, img.path]);
    const md = await ThinMetadata.open(img.path);
    try {
      const k = slowReader();
      await dump(md, k.out, { format });
      const b = k.bytes();
      expect({ bytes: b.length, sha256: sha(b) }).toEqual({ bytes: ref.bytes, sha256: ref.sha256 });
      expect(k.most()).toBeLessThanOrEqual(1 << 20);
    } finally {
      await md.close();
    }
  }, 600_000);

  test.each(keepers)('the library writeDelta() into %s equals thin_delta', async (_name, make) => {
    const md = await ThinMetadata.open(big.path);
    try {
      const ids = [...(await md.devices()).keys()];
      expect(ids.length).toBeGreaterThanOrEqual(2);
      const [left, right] = [ids[0], ids[ids.length - 1]];
      const ref = await hashOutput(oraclePath('thin_delta')!, ['--thin1', String(left), '--thin2', String(right), big.path]);
      expect(ref.status).toBe(0);
      const k = make();
      await writeDelta(md, k.out, { left, right });
      const b = k.bytes();
      expect(b.length).toBeGreaterThan(1 << 19);
      expect({ bytes: b.length, sha256: sha(b) }).toEqual({ bytes: ref.bytes, sha256: ref.sha256 });
    } finally {
      await md.close();
    }
  }, 600_000);
});

describeOracle('ls with fields from the details tree reads that tree alone, as thin_ls 0.9.0', () => {
  // A fault in the top-level mapping tree (a device its details name but
  // that tree lacks, or a damaged top-level leaf): thin_ls prints the
  // details and exits 0, and so does ls without a mapping walk; every
  // command that reads the mappings, and check, exits 1.
  test.each(['details-only-device', 'checksum'] as const)('%s in the top-level tree', async (kind) => {
    const { corrupt, listNodes } = await import('../helpers/corrupt');
    const base = fixtureImage('snapshots');
    let image: Buffer;
    if (kind === 'details-only-device') image = corrupt(base, kind).image;
    else {
      // One top-level leaf's checksum broken.
      image = Buffer.from(base);
      const leaf = listNodes(base).find((n) => n.tree === 'top' && n.leaf)!;
      image[leaf.block * 4096 + 100] ^= 0xff;
    }
    using f = tempImage(image);
    for (const args of [[], ['--no-headers', '-o', 'DEV,MAPPED_BLOCKS,TRANSACTION,CREATE_TIME,SNAP_TIME,MAPPED_BYTES']]) {
      same(['ls', ...args, f.path], 'thin_ls', [...args, f.path]);
    }
    for (const args of [['ls', '-o', 'DEV,EXCLUSIVE_BLOCKS'], ['dump'], ['check']]) {
      const r = runCli([...args, f.path]);
      expect([args.join(' '), r.status]).toEqual([args.join(' '), 1]);
    }
  });
});
