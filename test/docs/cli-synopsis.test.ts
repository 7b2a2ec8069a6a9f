/**
 * The README's command synopses and the CLI agree: every option the README
 * shows for a command is one that command's --help lists, and every option
 * --help lists is documented somewhere in the README.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from '../cli/run-cli';

const README = readFileSync(join(__dirname, '..', '..', 'README.md'), 'utf8');

/** The bodies of the README's fenced blocks that have no language tag. */
function plainBlocks(): string[][] {
  const blocks: string[][] = [];
  let open: string[] | null = null;
  let inOther = false;
  for (const line of README.split('\n')) {
    if (line.startsWith('```')) {
      if (open) {
        blocks.push(open);
        open = null;
      } else if (inOther) inOther = false;
      else if (line === '```') open = [];
      else inOther = true;
    } else if (open) open.push(line);
  }
  return blocks;
}

/** `command words` -> options named on its synopsis lines. */
function synopses(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const block of plainBlocks()) {
    let current: Set<string> | undefined;
    for (const raw of block) {
      const line = raw.replace(/#.*$/, '');
      if (/^dmthin /.test(line)) {
        const words = line.split(/\s+/).slice(1);
        const cmd = [words[0], ...(words[0] === 'pool' || words[0] === 'backups' ? [words[1]] : [])].join(' ');
        current = out.get(cmd) ?? new Set();
        out.set(cmd, current);
      } else if (!/^\s/.test(line)) {
        current = undefined;
      }
      if (current) for (const m of line.matchAll(/(?<![\w-])(--?[a-zA-Z][\w-]*)/g)) current.add(m[1]);
    }
  }
  return out;
}

const has = (text: string, opt: string) => new RegExp(`(^|[\\s,|\\[(])${opt.replace(/[-]/g, '\\-')}([\\s,=<\\[|\\])]|$)`, 'm').test(text);

const commands = [...synopses().entries()];

test('the README shows synopses for every command', () => {
  expect(commands.map(([c]) => c).sort()).toEqual(
    ['check', 'delta', 'devices', 'dump', 'ls', 'message', 'rmap', 'pool create-snap', 'pool create-thin', 'pool delete', 'pool events', 'pool release-metadata-snap', 'pool reserve-metadata-snap', 'pool set-transaction-id', 'merge', 'pool status', 'receive', 'replicate', 'send', 'backup', 'restore', 'backups init', 'backups list', 'backups verify', 'backups prune', 'backups delete'].sort(),
  );
});

describe.each(commands)('dmthin %s', (cmd, opts) => {
  const help = runCli([...cmd.split(' '), '--help']);

  test('--help works', () => expect(help.status).toBe(0));

  test('every option of the synopsis is in --help', () => {
    expect([...opts].filter((o) => !has(help.stdout, o))).toEqual([]);
  });

  test('every option of --help is documented in the README', () => {
    const section = help.stdout.split(/^Options:$/m)[1] ?? '';
    // [short, long] pairs; either form documented is enough.
    const listed = [...section.matchAll(/^ {2}(?:(-\w), )?(--[\w-]+)|^ {2}(-\w)\b/gm)].map((m) => [m[1] ?? m[3], m[2]].filter(Boolean) as string[]);
    expect(listed.length).toBeGreaterThan(0);
    expect(listed.filter((forms) => !forms.includes('--help') && !forms.some((o) => has(README, o))).map((f) => f.join(', '))).toEqual([]);
  });
});
