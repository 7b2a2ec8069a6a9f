/**
 * The root help lists the commands from COMMAND_LIST (src/cli/commands.ts)
 * without loading them: the listing must be the one commander prints with
 * every command registered whole, as it was made before the table.
 */
import { Command } from 'commander';
import { COMMANDS, COMMAND_LIST } from '../../src/cli/commands';
import type { CliContext } from '../../src/cli/common';
import { CLI } from './run-cli';
import { spawnSync } from 'node:child_process';

/** The "Commands:" part of a help text. */
const commandsPart = (help: string): string => help.slice(help.indexOf('Commands:'));

test('the root help lists every command as the commands registered whole list themselves', () => {
  const whole = new Command('dmthin').configureOutput({ getOutHelpWidth: () => 80, getErrHelpWidth: () => 80 });
  for (const c of Object.keys(COMMANDS)) COMMANDS[c]().register(whole, () => ({}) as CliContext);
  const want = commandsPart(whole.helpInformation());
  expect(want.split('\n').length).toBeGreaterThan(Object.keys(COMMANDS).length);
  const got = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' });
  expect(got.status).toBe(0);
  expect(commandsPart(got.stdout)).toBe(want);
});

test('COMMAND_LIST has every command, and each command describes itself from it', () => {
  expect(Object.keys(COMMAND_LIST)).toEqual(Object.keys(COMMANDS));
  for (const c of Object.keys(COMMANDS)) {
    const p = new Command('dmthin');
    COMMANDS[c]().register(p, () => ({}) as CliContext);
    const cmd = p.commands.find((x) => x.name() === c)!;
    expect([c, cmd.description()]).toEqual([c, COMMAND_LIST[c].description]);
    expect([c, cmd.registeredArguments.map((a) => (a.required ? `<${a.name()}${a.variadic ? '...' : ''}>` : `[${a.name()}${a.variadic ? '...' : ''}]`))]).toEqual([c, COMMAND_LIST[c].args]);
    expect([c, cmd.options.length > 0]).toEqual([c, COMMAND_LIST[c].options]);
  }
});
