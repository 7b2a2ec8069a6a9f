/**
 * `dmthin pool events` without a kernel: argument errors and a missing pool
 * are one line and status 1; the text and JSON forms of each event type,
 * from kernel-format status lines, against hand-written expected lines. The
 * command's run against a real pool is in test/vm/events.vm.test.ts.
 */
import { parseThinPoolStatus } from '../../src/dm/targets/thin-pool';
import { eventJson, formatEvent } from '../../src/cli/pool';
import { derivePoolEvents } from '../../src/pool/events';
import { dataBlocks } from '../../src/units';
import { runCli } from './run-cli';

test('argument errors: status 1, one line naming the problem', () => {
  for (const [args, text] of [
    // 0 is refused as any other count below 1: the message says a positive integer, not a non-negative one.
    [['--count', '0'], "--count must be a positive integer (1 or more); got '0'"],
    [['--count', '-1'], "--count must be a positive integer (1 or more); got '-1'"],
    [['--count', 'x'], "--count must be a positive integer (1 or more); got 'x'"],
    [['--timeout', '0'], "--timeout must be whole seconds, 1..2147483; got '0'"],
    [['--timeout', '-3'], "--timeout must be whole seconds, 1..2147483; got '-3'"],
    // The range is stated (a timer takes at most 2^31-1 ms), not only "out of range".
    [['--timeout', '2147484'], "--timeout must be whole seconds, 1..2147483; got '2147484'"],
  ] as [string[], string][]) {
    const r = runCli(['pool', 'events', 'p', ...args]);
    expect({ args, status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ args, status: 1, stdout: '', stderr: `dmthin pool events: ${text} [EINVAL]\n` });
  }
});

test('a pool that cannot be opened (no device-mapper here, or no such pool): status 1, one line', () => {
  const r = runCli(['pool', 'events', 'dmthin-test-no-such-pool', '--timeout', '5']);
  expect(runCli(['pool', 'events', 'p', '--help']).stdout.replace(/\s+/g, ' ')).toContain('--count <n> exit after N events, N >= 1');
  expect(r.status).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(/^dmthin pool events: .*\[E[A-Z]+\]\n$/);
});

test('one line per event, text and JSON', () => {
  const before = parseThinPoolStatus('7 120/1024 100/200 - rw discard_passdown queue_if_no_space - 256 ');
  const after = parseThinPoolStatus('7 800/1024 200/200 - out_of_data_space discard_passdown queue_if_no_space needs_check 256 ');
  const evs = derivePoolEvents(before, after, dataBlocks(50), 12);
  expect(evs.map(formatEvent).join('')).toBe(
    ['12 mode rw -> out_of_data_space', '12 low-water-mark free=0 mark=50', '12 metadata-low free=224 watermark=256', '12 needs-check', ''].join('\n'),
  );
  expect(JSON.parse(eventJson('pool0', evs[0]))).toEqual({
    pool: 'pool0',
    type: 'mode',
    from: 'rw',
    to: 'out_of_data_space',
    eventNr: 12,
    status: {
      kind: 'working',
      transactionId: '7', // a u64: a decimal string in JSON (docs/json.md)
      usedMetadata: 800,
      totalMetadata: 1024,
      usedData: 200,
      totalData: 200,
      heldMetadataRoot: null,
      mode: 'out_of_data_space',
      discard: 'discard_passdown',
      noSpacePolicy: 'queue',
      needsCheck: true,
      metadataLowWatermark: 256,
      extra: [],
    },
  });
  expect(eventJson('p', derivePoolEvents(before, before, dataBlocks(50), 13)[0])).toMatch(/^\{"pool":"p","type":"other","eventNr":13,"status":\{.*\}\}\n$/);
});
