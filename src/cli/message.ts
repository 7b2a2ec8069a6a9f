/** `dmthin message`: a raw DM_TARGET_MSG, like `dmsetup message`. */
import type { Command } from 'commander';
import type { DeviceMapper as DeviceMapperT } from '../dm/device-mapper';
import { sectors } from '../units';
import { CliContext, parseIntArg, print } from './common';

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('message')
    .description('send a raw target message (DM_TARGET_MSG); prints the reply if the target returns one')
    .argument('<name>', 'dm device name')
    .argument('<sector>', 'sector of the target, decimal (0 for a pool)')
    .argument('<message...>', 'message words')
    .action(async (name: string, sector: string, words: string[]) => {
      ctx();
      const { DeviceMapper } = require('../dm/device-mapper') as { DeviceMapper: typeof DeviceMapperT };
      const out = await new DeviceMapper().targetMessage(name, sectors(parseIntArg('sector', sector)), words.join(' '));
      if (out !== undefined) print(out.endsWith('\n') ? out : out + '\n');
    });
}
