/**
 * CliContext.checkInputs(): the check that a command's inputs (a metadata
 * snapshot) are still what it read. Once it passes after the last read, it
 * stands: rmap checks before its sort and its commit asks again, and a
 * release during the sort or the printing (review: a big rmap -m into a slow
 * reader failed ESTALE, its output cut, after every block was read and
 * checked) changes nothing that was read.
 */
import { CliContext } from '../../src/cli/common';

describe('CliContext.checkInputs', () => {
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  let before: Map<string, NodeJS.SignalsListener[]>;
  beforeEach(() => {
    before = new Map(signals.map((s) => [s, process.listeners(s)]));
  });
  afterEach(() => {
    // The context listens for signals: what it added goes.
    for (const s of signals) for (const l of process.listeners(s)) if (!before.get(s)!.includes(l)) process.off(s, l);
  });

  test('a check that passed stands: a later call does not ask again', async () => {
    const c = new CliContext('test');
    let calls = 0;
    c.onInputCheck({
      verify: async () => {
        if (++calls > 1) throw new Error('released since');
      },
    });
    await c.checkInputs();
    await c.checkInputs();
    expect(calls).toBe(1);
  });

  test('a check that failed is asked again (and fails again), never taken as passed', async () => {
    const c = new CliContext('test');
    let calls = 0;
    c.onInputCheck({
      verify: async () => {
        calls++;
        throw new Error('released');
      },
    });
    await expect(c.checkInputs()).rejects.toThrow('released');
    await expect(c.checkInputs()).rejects.toThrow('released');
    expect(calls).toBe(2);
  });
});
