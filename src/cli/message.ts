/** `dmthin message`: a raw DM_TARGET_MSG, like `dmsetup message`. */
import type { Command } from 'commander';
import type { DeviceMapper as DeviceMapperT } from '../dm/device-mapper';
import type { DeviceRef } from '../dm/ioctl';
import { UsageError } from '../errors';
import { sectors } from '../units';
import { CliContext, parseIntArg, print } from './common';
import { COMMAND_LIST } from './commands';

/** Pool messages that change thin ids or the transaction id: LVM records both in its own metadata. */
const CHANGES_LVM_RECORDS = new Set(['create_thin', 'create_snap', 'delete', 'set_transaction_id']);

/** The first argument the kernel's dm_split_args makes of a message: white space separates, a backslash escapes. */
export function firstWord(text: string): string {
  let i = 0;
  while (i < text.length && /\s/.test(text[i])) i++;
  let w = '';
  for (; i < text.length && !/\s/.test(text[i]); i++) {
    if (text[i] === '\\' && i + 1 < text.length) i++;
    w += text[i];
  }
  return w;
}

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('message')
    .description(COMMAND_LIST.message.description)
    .argument('<name>', 'dm device name, or its device node (/dev/mapper/NAME, /dev/dm-N)')
    .argument('<sector>', 'sector of the target, decimal (0 for a pool)')
    .argument('<message...>', 'message words')
    .option('--force', "send create_thin, create_snap, delete or set_transaction_id to an LVM-made device too (LVM's metadata then no longer matches the pool's)")
    .action(async (name: string, sector: string, words: string[], o: { force?: boolean }) => {
      ctx();
      const { DeviceMapper } = require('../dm/device-mapper') as { DeviceMapper: typeof DeviceMapperT };
      const at = sectors(parseIntArg('sector', sector));
      const dm = new DeviceMapper();
      // A device node (/dev/mapper/NAME, /dev/dm-N) is the device it is, as dmsetup takes it.
      let ref: DeviceRef = name;
      if (name.startsWith('/')) {
        const { devNumOf } = require('../dm/block-devices') as typeof import('../dm/block-devices');
        ref = { dev: await devNumOf(name) };
      }
      const text = words.join(' ');
      // The verb as the kernel reads it: the first word of the whole text (split as dm_split_args
      // splits: at white space, a backslash escaping the next character), case-insensitive
      // (strcasecmp). Before, `'create_thin 7'` as one argument, or a leading space, got past.
      const verb = firstWord(text).toLowerCase();
      if (CHANGES_LVM_RECORDS.has(verb) && !o.force) {
        const { isLvmUuid } = require('../pool/lvm') as typeof import('../pool/lvm');
        const uuid = (await dm.info(ref)).uuid;
        if (isLvmUuid(uuid)) {
          throw new UsageError(`${name} was made by LVM: ${verb} behind LVM's back would leave LVM's metadata (thin ids, transaction id) out of step; use lvcreate/lvremove, or add --force if you will repair LVM's metadata yourself`, { device: name });
        }
      }
      const out = await dm.targetMessage(ref, at, text);
      if (out !== undefined) print(out.endsWith('\n') ? out : out + '\n');
    });
}
