/**
 * Smoke test of the root-VM harness: a real kernel runs dm-thin under it.
 * Pool on two loop devices (tmpfs files), create_thin, direct writes through
 * the thin device, a metadata snapshot read by thin_dump and by the library
 * (from src/ and from dist/), teardown.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  DmSandbox,
  MiB,
  attachedLoops,
  describeVm,
  dmDeviceNames,
  haveProgram,
  mappedBlocksByDevice,
  parsePoolStatus,
  run,
  sectors,
  useDmSandbox,
} from './helpers';

const BLOCK_SECTORS = 128; // 64 KiB data blocks
const BLOCK_BYTES = BLOCK_SECTORS * 512;

describeVm('root VM: real device-mapper', () => {
  const sandbox = useDmSandbox('smoke');

  test('runs as root with /dev/mapper/control and the dm targets the suites use', () => {
    expect(process.getuid?.()).toBe(0);
    expect(statSync('/dev/mapper/control').isCharacterDevice()).toBe(true);
    const targets = run('dmsetup', ['targets']).stdout;
    for (const t of ['thin-pool', 'thin', 'linear', 'error']) expect(targets).toMatch(new RegExp(`^${t}\\s`, 'm'));
    // Modules loaded when the kernel has them (Debian's does).
    for (const t of ['zero', 'flakey', 'delay']) {
      if (!targets.match(new RegExp(`^${t}\\s`, 'm'))) console.warn(`dm target ${t} is not available in this kernel`);
    }
  });

  test('thin pool: create_thin, direct writes, metadata snapshot, thin_dump, library, teardown', async () => {
    const sb = sandbox();
    const meta = sb.loop(8 * MiB, 'meta');
    const data = sb.loop(64 * MiB, 'data');
    const dataSectors = sectors(data.sizeBytes);

    const pool = sb.create('pool', `0 ${dataSectors} thin-pool ${meta.path} ${data.path} ${BLOCK_SECTORS} 0`);
    expect(existsSync(pool.path)).toBe(true);
    const fresh = sb.status('pool');
    expect(fresh).toMatch(/^0 \d+ thin-pool \d+ \d+\/\d+ \d+\/\d+ - rw( |$)/);
    const st0 = parsePoolStatus(fresh);
    expect(st0).toMatchObject({
      transactionId: 0,
      usedDataBlocks: 0,
      totalDataBlocks: data.sizeBytes / BLOCK_BYTES,
      totalMetadataBlocks: meta.sizeBytes / 4096,
      heldMetadataRoot: null,
      mode: 'rw',
    });
    expect(st0.usedMetadataBlocks).toBeGreaterThan(0);

    sb.message('pool', 0, 'create_thin', '0');
    // The thin table names its pool by path (the node made by mknodes) here;
    // pool.devt ("major:minor") works as well.
    const thinSectors = 2 * dataSectors; // over-provisioned on purpose
    const thin = sb.create('thin0', `0 ${thinSectors} thin ${pool.path} 0`);

    // 8 MiB of random data at offset 4 MiB, written with O_DIRECT.
    const payload = randomBytes(8 * MiB);
    const src = join(sb.dir, 'payload.bin');
    writeFileSync(src, payload);
    run('dd', [`if=${src}`, `of=${thin.path}`, 'bs=1M', 'seek=4', 'count=8', 'oflag=direct', 'status=none']);

    const st1 = sb.poolStatus('pool');
    expect(st1.usedDataBlocks).toBe((8 * MiB) / BLOCK_BYTES);
    expect(st1.transactionId).toBe(0);

    // Read back through the thin device, bypassing the page cache.
    const back = join(sb.dir, 'back.bin');
    run('dd', [`if=${thin.path}`, `of=${back}`, 'bs=1M', 'skip=4', 'count=8', 'iflag=direct', 'status=none']);
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    expect(sha(readFileSync(back))).toBe(sha(payload));

    sb.message('pool', 0, 'reserve_metadata_snap');
    const st2 = sb.poolStatus('pool');
    expect(st2.heldMetadataRoot).not.toBeNull();
    expect(st2.heldMetadataRoot).toBeGreaterThan(0);

    if (haveProgram('thin_dump')) {
      const xml = run('thin_dump', ['-m', meta.path]).stdout;
      const mapped = mappedBlocksByDevice(xml);
      expect([...mapped.keys()]).toEqual([0]);
      expect(mapped.get(0)).toBe((8 * MiB) / BLOCK_BYTES);
    } else if (process.env.DMTHIN_REQUIRE_ORACLE === '1') {
      throw new Error('thin_dump (thin-provisioning-tools) is not installed, and DMTHIN_REQUIRE_ORACLE=1');
    } else {
      console.warn('thin_dump not installed: metadata snapshot not cross-checked');
    }

    // The library reads the same snapshot of the live pool, loaded both from
    // src/ (TypeScript, transpiled on the host) and from dist/ (npm run build).
    const libs: [string, typeof import('../../src/index')][] = [
      ['src', await import('../../src/index')],
      ['dist', require('../../dist/index.js') as typeof import('../../src/index')],
    ];
    for (const [from, lib] of libs) {
      const md = await lib.ThinMetadata.open(meta.path, { metadataSnap: true });
      try {
        const devices = await md.devices();
        expect({ from, ids: [...devices.keys()], mapped: devices.get(0)?.mappedBlocks }).toEqual({
          from,
          ids: [0],
          mapped: (8 * MiB) / BLOCK_BYTES,
        });
      } finally {
        await md.close();
      }
    }

    sb.message('pool', 0, 'release_metadata_snap');
    expect(sb.poolStatus('pool').heldMetadataRoot).toBeNull();

    sb.remove('thin0');
    sb.remove('pool');
    expect(dmDeviceNames()).not.toContain(pool.name);
  });

  test('cleanup tears down devices and loops left behind by a failing test', () => {
    const sb = new DmSandbox('cleanup');
    const meta = sb.loop(4 * MiB, 'meta');
    const data = sb.loop(16 * MiB, 'data');
    const pool = sb.create('pool', `0 ${sectors(data.sizeBytes)} thin-pool ${meta.path} ${data.path} 128 0`);
    sb.message('pool', 0, 'create_thin', '7');
    const thin = sb.create('thin7', `0 2048 thin ${pool.devt} 7`);
    sb.suspend('thin7'); // a suspended device must not block the teardown
    expect(dmDeviceNames()).toEqual(expect.arrayContaining([pool.name, thin.name]));

    sb.cleanup();
    expect(dmDeviceNames()).not.toContain(pool.name);
    expect(dmDeviceNames()).not.toContain(thin.name);
    const loops = attachedLoops();
    expect(loops).not.toContain(meta.path);
    expect(loops).not.toContain(data.path);
    expect(existsSync(sb.dir)).toBe(false);
  });
});
