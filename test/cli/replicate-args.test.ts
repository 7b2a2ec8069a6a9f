/**
 * `dmthin replicate --every` and the library's `every`, checked before any
 * pool is opened (no device-mapper needed). Node clamps a timer above 2^31-1
 * ms to 1 ms: a longer interval would run the cycles back to back.
 */
import { runCli } from './run-cli';
import { UsageError } from '../../src/errors';
import { replicate } from '../../src/ops/replicate';

const RANGE = "--every must be whole seconds from 1 to 2147483 (24.8 days), got '";
const args = (every: string) => ['replicate', '--pool', 'no-such-pool', '--thin', '1', '--target', '/nonexistent/replica', '--every', every];

test.each(['2147484', '3000000', '99999999999', '0', '1.5', '1e3', '0x10', ' 5', '-5', ''])('replicate --every %j: exit 1, one line stating the range', (every) => {
  const r = runCli(args(every));
  expect({ status: r.status, stdout: r.stdout }).toEqual({ status: 1, stdout: '' });
  expect(r.stderr).toBe(`dmthin replicate: ${RANGE}${every}' [EINVAL]\n`);
});

test.each(['1', '2147483', '0060'])('replicate --every %j is taken (the run fails later, at the pool)', (every) => {
  const r = runCli(args(every));
  expect(r.status).toBe(1);
  expect(r.stderr).not.toMatch(/--every/);
});

test('replicate --help states the range', () => {
  expect(runCli(['replicate', '--help']).stdout.replace(/\s+/g, ' ')).toContain('every SECONDS (whole seconds, 1 to 2147483) until interrupted');
});

describe('the library entry point', () => {
  const run = (every: unknown) => replicate({ pool: 'no-such-pool', thin: 1, target: '/nonexistent/replica', every: every as number }).next();

  test.each([2147483.5, 3e6, Infinity, NaN, 0, -1, '5'])('every %p: UsageError stating the range, before the pool is opened', async (every) => {
    const e = await run(every).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toBe(`every must be a number of seconds above 0 and at most 2147483, not ${String(every)}`);
  });

  test.each([0.5, 2147483])('every %p is taken (the run fails later, at the pool)', async (every) => {
    const e = await run(every).then(() => undefined, (x: unknown) => x);
    expect((e as Error).message).not.toMatch(/^every/);
  });
});
