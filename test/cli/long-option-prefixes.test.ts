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
  expect(amb.stderr).toMatch(/unknown option '--snap'/);
});
