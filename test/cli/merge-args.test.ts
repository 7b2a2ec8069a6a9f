/**
 * `dmthin merge` argument checks, before any device is touched: they hold on
 * the host (no device-mapper needed). The merge itself is tested in the VM
 * (test/vm/merge.vm.test.ts).
 */
import { runCli } from './run-cli';

test.each([
  [['--pool', 'p', '--snap', '1'], /give --external-origin DEVICE or --origin ID \(one of them\) \[EINVAL\]$/],
  [['--pool', 'p', '--snap', '1', '--origin', '2', '--external-origin', '/dev/null'], /give --external-origin DEVICE or --origin ID \(one of them\) \[EINVAL\]$/],
  [['--pool', 'p', '--snap', 'x', '--origin', '2'], /--snap takes a thin device id \(a number\), got 'x'; a snapshot LVM made is merged with LVM's own command: lvconvert --merge VG\/x \[EINVAL\]$/],
  [['--pool', 'vg/tp', '--snap', 's3', '--origin', 'lv1'], /--snap takes a thin device id \(a number\), got 's3'; a snapshot LVM made is merged with LVM's own command: lvconvert --merge vg\/s3 \[EINVAL\]$/],
  // A number out of range, or anything number-like, gets the range; no lvconvert hint (there is no LV '-1').
  [['--pool', 'p', '--snap', '16777216', '--origin', '2'], /: --snap must be a thin device id \(0\.\.16777215\), got '16777216' \[EINVAL\]$/],
  [['--pool', 'p', '--snap', '-1', '--origin', '2'], /: --snap must be a thin device id \(0\.\.16777215\), got '-1' \[EINVAL\]$/],
  [['--pool', 'p', '--snap', '1e0', '--origin', '2'], /: --snap must be a thin device id \(0\.\.16777215\), got '1e0' \[EINVAL\]$/],
  [['--pool', 'p', '--snap', '0x10', '--origin', '2'], /: --snap must be a thin device id \(0\.\.16777215\), got '0x10' \[EINVAL\]$/],
  [['--pool', 'p', '--snap', '1.5', '--origin', '2'], /: --snap must be a thin device id \(0\.\.16777215\), got '1\.5' \[EINVAL\]$/],
  // Given as VG/LV, the hint does not add another VG.
  [['--pool', 'vg/tp', '--snap', 'vg/s3', '--origin', '2'], /lvconvert --merge vg\/s3 \[EINVAL\]$/],
])('dmthin merge %j: exit 1, one line', (args, re) => {
  const r = runCli(['merge', ...args]);
  expect({ status: r.status, stdout: r.stdout, lines: r.stderr.trim().split('\n').length }).toEqual({ status: 1, stdout: '', lines: 1 });
  expect(r.stderr.trim()).toMatch(/^dmthin merge: /);
  expect(r.stderr.trim()).toMatch(re);
});
