/**
 * A damaged metadata space-map index block (its checksum, or the block number
 * it holds its own) with every tree intact: thin_ls and thin_delta 0.9.0 open
 * the space maps when they read the live superblock and refuse such metadata
 * (exit 1), but not through the metadata snapshot (-m); thin_dump and
 * thin_rmap never open them. dmthin's exit statuses must be theirs, and where
 * both succeed the output too. Found by random corruption of fixture blocks.
 */
import { describeOracle, fixtureImage, runOracle, tempImage, type TempFile } from '../helpers/fixtures';
import { blk, seal, superblock } from '../helpers/corrupt';
import { runCli } from '../cli/run-cli';

type Damage = 'blocknr' | 'checksum';

/** The fixture with its metadata index block damaged as named (the trees untouched). */
function damaged(name: string, how: Damage): Buffer {
  const img = Buffer.from(fixtureImage(name));
  const at = superblock(img).metaSm.bitmapRoot;
  const b = blk(img, at);
  if (how === 'blocknr') {
    b.writeBigUInt64LE(BigInt(at) + (1n << 35n), 8); // what it says of itself
    seal(b, 'index');
  } else {
    b[200] ^= 0x10; // an unused entry's byte: only the checksum notices
  }
  return img;
}

const CASES: [string, Damage, boolean][] = [
  ['snapshots', 'blocknr', false],
  ['snapshots', 'checksum', false],
  ['metadata-snap-diverged', 'blocknr', true],
  ['metadata-snap-diverged', 'checksum', true],
];

describeOracle('a damaged metadata space-map index block: exit statuses as thin-provisioning-tools 0.9.0', () => {
  describe.each(CASES)('%s, %s', (name, how, held) => {
    let img: TempFile;
    let devs: string[];
    let snapDevs: string[] = [];
    beforeAll(() => {
      const clean = tempImage(fixtureImage(name));
      const ids = (args: string[]) => runOracle('thin_ls', [...args, '--no-headers', '-o', 'DEV', clean.path]).stdout.trim().split(/\s+/);
      try {
        devs = ids([]);
        if (held) snapDevs = ids(['-m']);
      } finally {
        clean.cleanup();
      }
      img = tempImage(damaged(name, how));
    });
    afterAll(() => img.cleanup());

    const cases = (): [string[], string, string[], boolean][] => {
      const [a, b] = [devs[0], devs[devs.length - 1]];
      const list: [string[], string, string[], boolean][] = [
        [['ls'], 'thin_ls', [], true],
        [['ls', '-o', 'DEV,EXCLUSIVE_BLOCKS,SHARED_BLOCKS'], 'thin_ls', ['-o', 'DEV,EXCLUSIVE_BLOCKS,SHARED_BLOCKS'], true],
        [['delta', '--verbose', '--snap1', a, '--snap2', b], 'thin_delta', ['--verbose', '--snap1', a, '--snap2', b], true],
        [['dump'], 'thin_dump', [], true],
        // Its trees share nodes: thin_rmap 0.9.0's output differs there anyway (rmap.oracle.test.ts).
        [['rmap', '--region', '0..100000'], 'thin_rmap', ['--region', '0..100000'], !held],
      ];
      // Through the held snapshot: delta -m differs from thin_delta -m in nr_data_blocks only (ORACLE-NOTES.md).
      const [sa, sb] = [snapDevs[0], snapDevs[snapDevs.length - 1]];
      if (held) list.push([['ls', '-m'], 'thin_ls', ['-m'], true], [['delta', '-m', '--snap1', sa, '--snap2', sb], 'thin_delta', ['-m', '--snap1', sa, '--snap2', sb], false]);
      return list;
    };

    test('every command exits as the reference tool does; equal output where both succeed', () => {
      const seen: { cmd: string; status: number | null }[] = [];
      for (const [ours, tool, args, compare] of cases()) {
        const o = runCli([...ours, img.path]);
        const r = runOracle(tool, [...args, img.path]);
        seen.push({ cmd: ours.join(' '), status: o.status });
        expect({ cmd: ours.join(' '), status: o.status }).toEqual({ cmd: ours.join(' '), status: r.status });
        if (o.status === 0 && compare) expect(o.stdout).toBe(r.stdout);
        if (o.status !== 0) {
          expect(o.stdout).toBe('');
          expect(o.stderr.trim().split('\n')).toHaveLength(1);
          expect(o.stderr).toMatch(/metadata (index block|sm)|checksum/);
        }
      }
      // The refusals are there: without -m, ls and delta fail; dump and rmap do not.
      const live = seen.filter((e) => !e.cmd.split(' ').includes('-m'));
      expect(live.filter((e) => /^(ls|delta)\b/.test(e.cmd)).map((e) => e.status)).toEqual([1, 1, 1]);
      expect(live.filter((e) => /^(dump|rmap)\b/.test(e.cmd)).map((e) => e.status)).toEqual([0, 0]);
    });
  });
});
