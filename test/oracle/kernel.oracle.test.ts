/**
 * The kernel-made images (test/fixtures/kernel): dump, ls and delta equal
 * thin_dump, thin_ls and thin_delta 0.9.0, live and through the held snapshot.
 */
import { describeOracle, kernelFixtureImage, listKernelFixtures, runOracle, tempImage, TempFile } from '../helpers/fixtures';
import { runCli } from '../cli/run-cli';
import { ThinMetadata, writeDelta } from '../../src';
import { Writable } from 'node:stream';

/** The delta printed in-process (the CLI itself is covered elsewhere; this keeps 100 pairs fast). */
async function deltaText(md: ThinMetadata, left: number, right: number, verbose: boolean): Promise<string> {
  let s = '';
  await writeDelta(md, new Writable({ write: (c, _e, cb) => ((s += c.toString()), cb()) }), { left, right }, { verbose });
  return s;
}

const ALL =
  'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME';

describeOracle('kernel-made images equal the reference tools', () => {
  describe.each(listKernelFixtures().map((f) => [f.name, f] as const))('%s', (name, f) => {
    let img: TempFile;
    beforeAll(() => {
      img = tempImage(kernelFixtureImage(name), `${name}.bin`);
    });
    afterAll(() => img.cleanup());
    const views: [string, string[], (s: string) => string][] = [['live', [], (s) => s]];
    if (f.heldRoot !== null) views.push(['-m', ['-m'], (s) => s.replace('nr_data_blocks="0"', `nr_data_blocks="${f.nrDataBlocks}"`)]);

    describe.each(views)('%s', (_v, m, fix) => {
      const devs = (m.length ? f.held!.devices : f.devices).map((d) => String(d.devId));

      test('dump xml and human_readable', () => {
        for (const fmt of ['xml', 'human_readable']) {
          const ref = runOracle('thin_dump', [...m, '-f', fmt, img.path]);
          const ours = runCli(['dump', ...m, '-f', fmt, img.path]);
          expect(ours.status).toBe(0);
          const want = fmt === 'xml' ? fix(ref.stdout) : ref.stdout.replace(/^(begin superblock: .*), 0$/m, `$1, ${f.nrDataBlocks}`);
          expect(ours.stdout).toBe(m.length ? want : ref.stdout);
        }
      });

      test('ls, every field', () => {
        const ref = runOracle('thin_ls', [...m, '-o', ALL, img.path]);
        expect(runCli(['ls', ...m, '-o', ALL, img.path]).stdout).toBe(ref.stdout);
      });

      test('delta: every device pair, plain and --verbose', async () => {
        await using md = await ThinMetadata.open(img.path, { metadataSnap: m.length ? true : undefined });
        let n = 0;
        for (const a of devs)
          for (const b of devs)
            for (const v of [false, true]) {
              const args = [...m, ...(v ? ['--verbose'] : []), '--snap1', a, '--snap2', b, img.path];
              const ref = runOracle('thin_delta', args);
              expect(ref.status).toBe(0);
              expect({ args, out: await deltaText(md, Number(a), Number(b), v) }).toEqual({ args, out: fix(ref.stdout) });
              n++;
            }
        expect(n).toBe(devs.length * devs.length * 2);
        // and once through the CLI
        const args = [...m, '--snap1', devs[0], '--snap2', devs[1], img.path];
        expect(runCli(['delta', ...args]).stdout).toBe(fix(runOracle('thin_delta', args).stdout));
      }, 300_000);
    });
  });
});
