/** `dmthin devices`: every dm device with its targets, like `dmsetup table`. */
import type { Command } from 'commander';
import type { DeviceMapper as DeviceMapperT } from '../dm/device-mapper';
import { CliContext, print } from './common';
import { toJson } from './json';
import { COMMAND_LIST } from './commands';

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('devices')
    .description(COMMAND_LIST.devices.description)
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      ctx();
      const { DeviceMapper } = require('../dm/device-mapper') as { DeviceMapper: typeof DeviceMapperT };
      const dm = new DeviceMapper();
      const formatDev = (d: { major: number; minor: number }) => `${d.major}:${d.minor}`;
      const rows = [];
      for (const d of (await dm.listDevices()).sort((a, b) => a.name.localeCompare(b.name))) {
        const info = await dm.info(d.name).catch(() => undefined);
        const table = await dm.table(d.name).catch(() => []);
        rows.push({
          name: d.name,
          dev: formatDev(d.dev),
          suspended: info?.suspended ?? null,
          openCount: info?.openCount ?? null,
          targets: table.map((t) => ({ start: t.start, length: t.length, type: t.type, params: t.params })),
        });
      }
      if (o.json) {
        print(toJson(rows) + '\n');
        return;
      }
      if (rows.length === 0) print('No devices found\n');
      for (const r of rows) {
        const state = r.suspended ? ' (suspended)' : '';
        print(`${r.name} (${r.dev})${state}\n`);
        for (const t of r.targets) print(`  ${t.start} ${t.length} ${t.type} ${t.params}\n`);
      }
    });
}
