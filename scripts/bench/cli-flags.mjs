// Node options of the installed `dmthin` command (its #! line): the benches
// run the CLI with them, as users do.
import { readFileSync } from 'node:fs';

export function cliNodeFlags(cli) {
  const m = /^#!\/usr\/bin\/env -S node (.*)$/.exec(readFileSync(cli, 'utf8').split('\n', 1)[0]);
  return m ? m[1].trim().split(/\s+/) : [];
}
