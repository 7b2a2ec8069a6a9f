/**
 * The CLI's exit guard (native/exit_guard.cc): Node 20 can deadlock while a
 * process ends (nodejs/node#54918: the main thread waits for V8's worker
 * tasks, one of which waits for the main thread). A command whose work is
 * done must still end, with its own status. The deadlock cannot be caused on
 * demand, so these tests stand in for it with a process that never ends by
 * itself (an event loop kept alive).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { CLI } from './run-cli';

const ROOT = join(__dirname, '..', '..');
const POOL = join(ROOT, 'examples', 'pool.bin');
let dir: string;
let keepAlive: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-exit-guard-'));
  // Preloaded into the CLI: an interval keeps the event loop alive forever,
  // as the deadlock keeps the process from ending.
  keepAlive = join(dir, 'keep-alive.js');
  writeFileSync(keepAlive, 'setInterval(() => {}, 1000);\n');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const run = (args: string[], timeout = 20_000) =>
  spawnSync(process.execPath, ['-r', keepAlive, CLI, ...args], { encoding: 'utf8', timeout, killSignal: 'SIGKILL', maxBuffer: 1 << 26 });

test('a finished command ends at once after its exit listeners (no Node teardown), status 0 and its whole output', () => {
  const plain = spawnSync(process.execPath, [CLI, 'dump', POOL], { encoding: 'utf8' });
  expect(plain.status).toBe(0);
  // Kept alive (as by the deadlock) and with an 'exit' listener of its own: the listener runs, then the process ends.
  const listener = join(dir, 'exit-listener.js');
  writeFileSync(listener, "process.on('exit', (c) => require('fs').writeSync(2, 'exit listener ' + c + '\\n'));\n");
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['-r', keepAlive, '-r', listener, CLI, 'dump', POOL], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL', maxBuffer: 1 << 26 });
  const ms = Date.now() - t0;
  expect(r.signal).toBeNull();
  expect(r.status).toBe(0);
  expect(r.stdout).toBe(plain.stdout);
  expect(r.stderr).toBe('exit listener 0\n');
  expect(ms).toBeLessThan(1500);
});

test('a finished command whose teardown Node must run (coverage, profiles) and cannot end ends after the grace, status 0 and its whole output', () => {
  const plain = spawnSync(process.execPath, [CLI, 'dump', POOL], { encoding: 'utf8' });
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['-r', keepAlive, CLI, 'dump', POOL], {
    encoding: 'utf8',
    timeout: 20_000,
    killSignal: 'SIGKILL',
    maxBuffer: 1 << 26,
    env: { ...process.env, NODE_V8_COVERAGE: join(dir, 'coverage') },
  });
  const ms = Date.now() - t0;
  expect(r.signal).toBeNull();
  expect(r.status).toBe(0);
  expect(r.stdout).toBe(plain.stdout);
  expect(ms).toBeGreaterThanOrEqual(2000);
  expect(ms).toBeLessThan(15_000);
});

test('a failed command keeps its status (1) and its one error line', () => {
  const r = run(['dump', join(dir, 'absent.bin')]);
  expect(r.signal).toBeNull();
  expect(r.status).toBe(1);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
});

test('the guard is armed once, clamps the status to 8 bits, refuses a bad grace; an armed process that ends by itself keeps its own status', () => {
  const code = `
    const { native } = require(${JSON.stringify(join(ROOT, 'dist', 'native', 'binding.js'))});
    const a = native();
    let bad = '';
    try { a.armExitGuard(3, -1); } catch (e) { bad = e.constructor.name; }
    const first = a.armExitGuard(256 + 42, 100);
    const second = a.armExitGuard(5, 0);
    process.stdout.write(JSON.stringify({ bad, first, second }));
    if (process.argv[1] === 'hang') setInterval(() => {}, 1000);
    else process.exitCode = 3;
  `;
  const hung = spawnSync(process.execPath, ['-e', code, 'hang'], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
  expect(JSON.parse(hung.stdout)).toEqual({ bad: 'RangeError', first: true, second: false });
  expect(hung.signal).toBeNull();
  expect(hung.status).toBe(42);
  const ends = spawnSync(process.execPath, ['-e', code, 'end'], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
  expect(ends.status).toBe(3);
});

test('a command whose work is left waiting on nothing (a promise never settled, the event loop empty) ends with 1 and a line, not 0 (outside hunt Q: replicate exited 0 having done nothing)', () => {
  const script = join(dir, 'hang.js');
  writeFileSync(
    script,
    `const { COMMANDS } = require(${JSON.stringify(join(ROOT, 'dist', 'cli', 'commands.js'))});
     COMMANDS.ls = () => ({ register(p) { p.command('ls').action(() => new Promise(() => {})); } });
     require(${JSON.stringify(join(ROOT, 'dist', 'cli', 'program.js'))}).run(['ls']);`,
  );
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 20_000 });
  expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({
    status: 1,
    stdout: '',
    stderr: 'dmthin ls: internal error: the command stopped before it finished (its work was left waiting on nothing); what it did is incomplete, run it again [EUNKNOWN]\n',
  });
});
