/**
 * Pool events derived from thin-pool status lines as the kernel prints them
 * (dm-thin's pool_status format), and ThinPool.events() over a scripted dm
 * transport and poller: the iterator's baseline, its re-waits from the last
 * counter seen, the table's low-water mark, abort, and removal.
 */
import { DeviceMapper } from '../../src/dm/device-mapper';
import type { DmEventPoller } from '../../src/dm/event-wait';
import { Cmd, Flag, IOCTL, decodeHeader, encodeDev, encodeRequest } from '../../src/dm/ioctl';
import { parseThinPoolStatus } from '../../src/dm/targets/thin-pool';
import { type PoolEvent, derivePoolEvents, poolState } from '../../src/pool/events';
import { ThinPool } from '../../src/pool/thin-pool';
import { dataBlocks } from '../../src/units';
import { statusResults } from '../dm/helpers/kernel-replies';

/** A 4.19+ status line: 1000 metadata blocks, 200 data blocks, metadata low watermark 250. */
const line = (o: { usedMeta?: number; usedData?: number; totalData?: number; mode?: string; needsCheck?: boolean } = {}) =>
  `1 ${o.usedMeta ?? 100}/1000 ${o.usedData ?? 10}/${o.totalData ?? 200} - ${o.mode ?? 'rw'} discard_passdown queue_if_no_space ${o.needsCheck ? 'needs_check' : '-'} 250 `;
const st = (o: Parameters<typeof line>[0] = {}) => parseThinPoolStatus(line(o));
const types = (evs: PoolEvent[]) => evs.map((e) => e.type);

describe('derivePoolEvents', () => {
  const lwm = dataBlocks(50);

  test('low-water-mark when free data blocks go from above the mark to at or below it, once', () => {
    const crossed = derivePoolEvents(st({ usedData: 149 }), st({ usedData: 150 }), lwm, 5); // free 51 -> 50
    expect(crossed).toEqual([{ type: 'low-water-mark', freeDataBlocks: 50, lowWaterMark: 50, eventNr: 5, status: st({ usedData: 150 }), previous: st({ usedData: 149 }) }]);
    expect(types(derivePoolEvents(st({ usedData: 10 }), st({ usedData: 190 }), lwm, 5))).toEqual(['low-water-mark']);
    // Already below: not again.
    expect(types(derivePoolEvents(st({ usedData: 150 }), st({ usedData: 160 }), lwm, 6))).toEqual(['other']);
    // Grown data device (free back above), then used again: a new crossing.
    expect(types(derivePoolEvents(st({ usedData: 160, totalData: 400 }), st({ usedData: 360, totalData: 400 }), lwm, 7))).toEqual(['low-water-mark']);
  });

  test('mode changes: rw -> out_of_data_space -> rw, ro, and Fail / Error lines', () => {
    const ood = derivePoolEvents(st({ usedData: 100 }), st({ usedData: 200, mode: 'out_of_data_space' }), lwm, 3);
    expect(types(ood)).toEqual(['mode', 'low-water-mark']);
    expect(ood[0]).toMatchObject({ from: 'rw', to: 'out_of_data_space' });
    expect(derivePoolEvents(st({ mode: 'out_of_data_space', usedData: 200 }), st({ usedData: 200, totalData: 400 }), lwm, 4)[0]).toMatchObject({
      type: 'mode',
      from: 'out_of_data_space',
      to: 'rw',
    });
    expect(derivePoolEvents(st(), st({ mode: 'ro' }), lwm, 4)[0]).toMatchObject({ type: 'mode', from: 'rw', to: 'ro' });
    expect(derivePoolEvents(st({ mode: 'ro' }), parseThinPoolStatus('Fail'), lwm, 4)).toEqual([
      { type: 'mode', from: 'ro', to: 'fail', eventNr: 4, status: { kind: 'fail' }, previous: st({ mode: 'ro' }) },
    ]);
    expect(derivePoolEvents(st(), parseThinPoolStatus('Error'), lwm, 4)[0]).toMatchObject({ type: 'mode', from: 'rw', to: 'error' });
    // A pre-3.11 line has no mode field: counted as rw.
    expect(poolState(parseThinPoolStatus('0 10/100 5/50 -'))).toBe('rw');
  });

  test('needs-check when the flag appears (with the ro it comes with)', () => {
    expect(types(derivePoolEvents(st(), st({ mode: 'ro', needsCheck: true }), lwm, 9))).toEqual(['mode', 'needs-check']);
    expect(types(derivePoolEvents(st({ mode: 'ro', needsCheck: true }), st({ mode: 'ro', needsCheck: true }), lwm, 10))).toEqual(['other']);
  });

  test('metadata-low when free metadata blocks go from above the kernel watermark to at or below it', () => {
    const ev = derivePoolEvents(st({ usedMeta: 749 }), st({ usedMeta: 750 }), lwm, 2); // free 251 -> 250, watermark 250
    expect(ev).toHaveLength(1);
    expect(ev[0]).toMatchObject({ type: 'metadata-low', freeMetadataBlocks: 250, metadataLowWatermark: 250 });
    expect(types(derivePoolEvents(st({ usedMeta: 750 }), st({ usedMeta: 800 }), lwm, 3))).toEqual(['other']);
    // Kernels that print no watermark: never derived.
    expect(types(derivePoolEvents(parseThinPoolStatus('0 10/100 5/500 - rw'), parseThinPoolStatus('0 99/100 5/500 - rw'), lwm, 3))).toEqual(['other']);
  });

  test('other: the counter moved but nothing recognised changed', () => {
    expect(derivePoolEvents(st(), st(), lwm, 11)).toEqual([{ type: 'other', eventNr: 11, status: st(), previous: st() }]);
  });
});

describe('ThinPool.events over a scripted kernel', () => {
  function fakeKernel() {
    const k = { eventNr: 1, usedData: 10, lwm: 50, removed: false, tableReads: 0 };
    let wake: ((v: boolean) => void) | undefined;
    const poller = (): DmEventPoller => {
      let closed = false;
      return {
        arm: () => undefined,
        readable: () => (closed ? Promise.resolve(false) : new Promise<boolean>((r) => (wake = r))),
        close: () => {
          closed = true;
          const w = wake;
          wake = undefined;
          w?.(false);
        },
      };
    };
    const dm = new DeviceMapper({
      nodes: 'never',
      eventPoller: poller,
      transport: async (cmd, req) => {
        const h = decodeHeader(req);
        if (k.removed) throw Object.assign(new Error('ENXIO: No such device or address, ioctl'), { code: 'ENXIO', errno: -6, syscall: 'ioctl' });
        let results: Buffer | undefined;
        if (cmd === Cmd.TABLE_STATUS) {
          if (h.flags & Flag.STATUS_TABLE) k.tableReads++;
          const params = h.flags & Flag.STATUS_TABLE ? `7:0 7:1 128 ${k.lwm} 0` : line({ usedData: k.usedData, mode: k.usedData >= 200 ? 'out_of_data_space' : 'rw' });
          results = statusResults([{ start: 0, length: 200 * 128, type: 'thin-pool', params }]);
        }
        const b = encodeRequest(
          { version: [4, 47, 0], name: h.name, eventNr: k.eventNr, flags: Flag.ACTIVE_PRESENT, targetCount: results ? 1 : 0, dev: encodeDev({ major: 253, minor: 2 }) },
          results,
        );
        b.writeUInt32LE(results ? IOCTL.size + results.length : IOCTL.data, IOCTL.data_size);
        return b;
      },
    });
    /** The kernel raised an event on the pool (after changing its state). */
    const event = (change: () => void) => {
      change();
      k.eventNr++;
      const w = wake;
      wake = undefined;
      w?.(true);
    };
    const waiting = () => wake !== undefined;
    return { dm, k, event, waiting };
  }
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const until = async (cond: () => boolean) => {
    for (let i = 0; i < 1000 && !cond(); i++) await tick();
    expect(cond()).toBe(true);
  };

  test('yields the typed events of each dm event, from the baseline status on; aborting ends the loop with AbortError', async () => {
    const { dm, k, event, waiting } = fakeKernel();
    const pool = await ThinPool.open('pool', { dm });
    const ac = new AbortController();
    const seen: PoolEvent[] = [];
    const loop = (async () => {
      for await (const ev of pool.events({ signal: ac.signal })) seen.push(ev);
    })();
    await until(waiting);
    event(() => (k.usedData = 160)); // free 40 <= 50
    await until(() => seen.length === 1 && waiting());
    expect(seen[0]).toMatchObject({ type: 'low-water-mark', eventNr: 2, freeDataBlocks: 40, lowWaterMark: 50 });
    // Two events, one wakeup: one item, with the latest counter and status.
    k.usedData = 200;
    k.eventNr++;
    event(() => undefined);
    await until(() => seen.length === 2 && waiting());
    expect(seen[1]).toMatchObject({ type: 'mode', from: 'rw', to: 'out_of_data_space', eventNr: 4 });
    // The low-water mark comes from the table at each event (a reload can change it).
    event(() => {
      k.usedData = 10;
      k.lwm = 5;
    });
    await until(() => seen.length === 3 && waiting());
    expect(seen[2]).toMatchObject({ type: 'mode', from: 'out_of_data_space', to: 'rw', eventNr: 5 });
    expect(k.tableReads).toBe(1 + 3); // ThinPool.open, then one per event
    ac.abort();
    await expect(loop).rejects.toMatchObject({ code: 'ABORT_ERR' });
  });

  test('the pool removed while waiting: the loop ends with ENXIO', async () => {
    const { dm, event, waiting, k } = fakeKernel();
    const pool = await ThinPool.open('pool', { dm });
    const it = pool.events();
    const next = it.next();
    await until(waiting);
    event(() => (k.removed = true));
    await expect(next).rejects.toMatchObject({ code: 'ENXIO', ioctl: 'DM_DEV_STATUS', device: 'pool' });
  });

  test('waitEvent without a counter waits for the next event from now; with one, returns at once if it moved', async () => {
    const { dm, event, waiting, k } = fakeKernel();
    const pool = await ThinPool.open('pool', { dm });
    const p = pool.waitEvent();
    await until(waiting);
    event(() => (k.usedData = 20));
    expect(await p).toMatchObject({ eventNr: 2, status: { usedData: 20 } });
    expect(await pool.waitEvent(1)).toMatchObject({ eventNr: 2 });
    const ac = new AbortController();
    const q = pool.waitEvent(undefined, { signal: ac.signal });
    await until(waiting);
    ac.abort();
    await expect(q).rejects.toMatchObject({ code: 'ABORT_ERR', name: 'AbortError' });
  });
});
