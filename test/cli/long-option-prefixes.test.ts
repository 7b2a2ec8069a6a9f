/**
 * The commands that stand for thin_dump, thin_ls, thin_delta, thin_rmap and
 * thin_check take a long option by any unambiguous prefix, as getopt_long in
 * the reference tools does (found by an outside hunt: `dump --skip` was
 * refused as unknown). Compared with the oracle byte for byte.
 */
import { fixtureFile, itOracle, runOracle } from '../helpers/fixtures';
import { runCli } from './run-cli';

const cases: [string, string[], string?][] = [
  ['dump', ['--skip']],
  ['dump', ['--dev', '1']],
  ['dump', ['--dev=1', '--form', 'human_readable']],
  ['ls', ['--no-h']],
  ['ls', ['--form', 'DEV,MAPPED_BLOCKS']],
  ['delta', ['--snap1', '1', '--snap2', '2', '--verb'], 'shared-subtree'],
  ['rmap', ['--reg', '0..5']],
];

describe('an unambiguous prefix of a long option', () => {
  for (const [cmd, args, fixture] of cases) {
    itOracle(`${cmd} ${args.join(' ')}: as thin_${cmd} reads it`, () => {
      using f = fixtureFile(fixture ?? 'basic');
      const ours = runCli([cmd, ...args, f.path]);
      const theirs = runOracle(`thin_${cmd}`, [...args, f.path]);
      expect(theirs.status).toBe(0);
      expect({ status: ours.status, stderr: ours.stderr }).toEqual({ status: 0, stderr: '' });
      expect(ours.stdout).toBe(theirs.stdout);
    });
  }
});

test('check --super and --ignore are --super-block-only and --ignore-non-fatal-errors; an exact name wins; an ambiguous prefix is refused', () => {
  using f = fixtureFile('basic');
  expect(runCli(['check', '--super', f.path]).stdout).toMatch(/devices and mappings not read/);
  expect(runCli(['check', '--ignore', f.path]).status).toBe(0);
  // --metadata-snap is a whole name (not a prefix of the hidden --metadata-snap-block).
  expect(runCli(['dump', '--metadata-snap', f.path]).stderr).not.toMatch(/unknown option/);
  // --snap is a prefix of --snap1 and --snap2: refused, as getopt_long refuses it.
  const amb = runCli(['delta', '--snap', '1', f.path]);
  expect(amb.status).toBe(1);
  expect(amb.stderr).toBe("dmthin delta: option '--snap' is ambiguous: --snap1, --snap2; see 'dmthin delta --help' [EINVAL]\n");
  // Both names of an option with two: --thin is a prefix of --thin1 and --thin2.
  expect(runCli(['delta', '--thin', '1', f.path]).stderr).toMatch(/option '--thin' is ambiguous: --thin1, --thin2;/);
});

itOracle('--vers is --version, as getopt_long reads it (found by an outside hunt)', () => {
  for (const cmd of ['dump', 'ls', 'check']) {
    const r = runCli([cmd, '--vers']);
    expect(runOracle(`thin_${cmd}`, ['--vers']).status).toBe(0);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  }
});

test('a prefix of options where no prefix is taken (send, receive, backup...): refused naming the options it begins, not a guess by spelling (found by an outside hunt)', () => {
  // Commander's own suggestion was "(did you mean --data?)".
  const r = runCli(['send', '--meta', 'x', '--snap', '1']);
  expect({ status: r.status, stderr: r.stderr }).toEqual({
    status: 1,
    stderr: "dmthin send: unknown option '--meta' (did you mean --metadata or --metadata-snap?); see 'dmthin send --help' [EINVAL]\n",
  });
});

test('subcommands of a group (backups, pool) name the options a prefix begins too (outside hunt R: "did you mean --help?", or a missing --repo for --rep)', () => {
  for (const [args, line] of [
    [['backups', 'prune', '--keep', '1'], "dmthin backups prune: unknown option '--keep' (did you mean --keep-last, --keep-daily or --keep-weekly?); see 'dmthin backups prune --help' [EINVAL]\n"],
    [['backups', 'verify', '--rep', 'R'], "dmthin backups verify: unknown option '--rep' (did you mean --repo or --repair?); see 'dmthin backups verify --help' [EINVAL]\n"],
  ] as const) {
    const r = runCli([...args]);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 1, stderr: line });
  }
});

itOracle('-hV (and -hq) on the getopt commands is -h: the usage, exit 0, as thin_* read it (outside hunt R: unknown option)', () => {
  for (const [cmd, flags] of [['dump', '-hV'], ['ls', '-hV'], ['check', '-hq']] as const) {
    expect(runOracle(`thin_${cmd}`, [flags]).status).toBe(0);
    const r = runCli([cmd, flags]);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toMatch(new RegExp(`^Usage: dmthin ${cmd} `));
  }
});

test('an option that looks like a negative number is an unknown option, as getopt says, not "too many arguments" (found by an outside hunt)', () => {
  using f = fixtureFile('basic');
  for (const cmd of ['check', 'dump', 'ls']) {
    const r = runCli([cmd, '-1', f.path]);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 1, stderr: `dmthin ${cmd}: unknown option '-1'; see 'dmthin ${cmd} --help' [EINVAL]\n` });
  }
  // The value of an option that takes one is left alone: --size -1 reaches --size's own check.
  expect(runCli(['send', '--metadata', f.path, '--data', f.path, '--snap', '1', '--size', '-1', '-o', '/dev/null']).stderr).toMatch(/^dmthin send: --size must be/);
  // After --, -1 is an argument.
  expect(runCli(['dump', '--', '-1']).stderr).toMatch(/^dmthin dump: -1: no such file/);
  // Only where getopt reads the line: message takes a negative number as a word of its message (review).
  expect(runCli(['message', 'p', '0', 'set_transaction_id', '-1', '0']).stderr).not.toMatch(/unknown option/);
});
