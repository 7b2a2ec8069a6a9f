/** `dmthin message`: a raw DM_TARGET_MSG, like `dmsetup message`. */
import type { Command } from 'commander';
import type { DeviceMapper as DeviceMapperT } from '../dm/device-mapper';
import { UsageError } from '../errors';
import { sectors } from '../units';
import { CliContext, parseIntArg, print } from './common';

/** Pool messages that change thin ids or the transaction id: LVM records both in its own metadata. */
const CHANGES_LVM_RECORDS = new Set(['create_thin', 'create_snap', 'delete', 'set_transaction_id']);

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('message')
    .description('send a raw target message (DM_TARGET_MSG); prints the reply if the target returns one')
    .argument('<name>', 'dm device name')
    .argument('<sector>', 'sector of the target, decimal (0 for a pool)')
    .argument('<message...>', 'message words')
    .option('--force', "send create_thin, create_snap, delete or set_transaction_id to an LVM-made device too (LVM's metadata then no longer matches the pool's)")
    .action(async (name: string, sector: string, words: string[], o: { force?: boolean }) => {
      ctx();
      const { DeviceMapper } = require('../dm/device-mapper') as { DeviceMapper: typeof DeviceMapperT };
      const at = sectors(parseIntArg('sector', sector));
      const dm = new DeviceMapper();
      const verb = words[0]?.toLowerCase() ?? '';
      if (CHANGES_LVM_RECORDS.has(verb) && !o.force) {
        const { isLvmUuid } = require('../pool/lvm') as typeof import('../pool/lvm');
        const uuid = (await dm.info(name)).uuid;
        if (isLvmUuid(uuid)) {
          throw new UsageError(`${name} was made by LVM: ${verb} behind LVM's back would leave LVM's metadata (thin ids, transaction id) out of step; use lvcreate/lvremove, or add --force if you will repair LVM's metadata yourself`, { device: name });
        }
      }
      const out = await dm.targetMessage(name, at, words.join(' '));
      if (out !== undefined) print(out.endsWith('\n') ? out : out + '\n');
    });
}
