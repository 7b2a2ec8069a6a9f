/** `dmthin devices`: every dm device with its targets, like `dmsetup table`. */
import type { Command } from 'commander';
import { DeviceMapper } from '../dm/device-mapper';
import { formatDev } from '../dm/ioctl';
import { CliContext } from './common';
import { toJson } from './json';

export function register(program: Command, ctx: () => CliContext): void {
  program
    .command('devices')
    .description('list device-mapper devices with their tables')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      ctx();
      const dm = new DeviceMapper();
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
        process.stdout.write(toJson(rows) + '\n');
        return;
      }
      if (rows.length === 0) process.stdout.write('No devices found\n');
      for (const r of rows) {
        const state = r.suspended ? ' (suspended)' : '';
        process.stdout.write(`${r.name} (${r.dev})${state}\n`);
        for (const t of r.targets) process.stdout.write(`  ${t.start} ${t.length} ${t.type} ${t.params}\n`);
      }
    });
}
