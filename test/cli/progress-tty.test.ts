/**
 * Progress bars on a terminal: `dump` and `rmap` write their output while
 * they work, so with stdout on the same terminal they draw none (the output's
 * lines would run into the bar, and the bar's teardown would move the cursor
 * back into them); with the output in a file the bar is drawn. The terminal
 * is script(1)'s pseudo-terminal.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { CLI } from './run-cli';
import { scratch, type Scratch } from '../stream/helpers';
import { fixtureImage } from '../helpers/fixtures';

let s: Scratch;
let meta: string;
beforeAll(() => {
  s = scratch();
  meta = s.path('snapshots.bin');
  writeFileSync(meta, fixtureImage('snapshots'));
});
afterAll(() => s.cleanup());

const shellQuote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;

/** Everything the terminal showed while `args` ran with stdin, stdout and stderr on it. */
function onTerminal(args: string[], raw = false): string {
  const typescript = s.path(`typescript-${args[0]}-${args.length}`);
  const r = spawnSync('script', ['-qec', (raw ? args : [process.execPath, CLI, ...args]).map(shellQuote).join(' '), typescript], { encoding: 'utf8', timeout: 60_000 });
  expect(r.error).toBeUndefined();
  expect(r.status).toBe(0);
  return readFileSync(typescript, 'latin1');
}

const CASES: [string, string[]][] = [
  ['dump', ['dump']],
  ['rmap', ['rmap', '--region', '0..100000']],
];

test.each(CASES)('%s with its output on the terminal: the output, and no bar', (name, args) => {
  const out = onTerminal([...args, meta]);
  expect(out).toMatch(name === 'dump' ? /<superblock/ : /^data \d+\.\.\d+ -> thin\(\d+\)/m);
  expect(out).not.toContain(`${name} [`);
  expect(out).not.toContain('\x1b8'); // no cursor restore of a bar's teardown
});

test.each(CASES)('%s -o FILE on a terminal: the bar is drawn (the same run shows one)', (name, args) => {
  const file = s.path(`${name}.out`);
  const out = onTerminal([...args, '-o', file, meta]);
  expect(out).toContain(`${name} [`);
  expect(readFileSync(file, 'utf8').length).toBeGreaterThan(0);
});

test('check draws its bar in the mappings phase with its report in a file, none with the report on the terminal (an outside test: it never drew one)', () => {
  const report = s.path('check.txt');
  const beside = onTerminal(['sh', '-c', `exec "$0" "$@" > ${shellQuote(report)}`, process.execPath, CLI, 'check', meta], true);
  expect(beside).toContain('check [');
  expect(readFileSync(report, 'utf8')).toMatch(/checking every device mapping tree\n[^]*no problems found\n$/);
  const same = onTerminal(['check', meta]);
  expect(same).toContain('no problems found');
  expect(same).not.toContain('check [');
});
