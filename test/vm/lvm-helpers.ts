/**
 * LVM2 inside the test guest (no udev, read-only root): an LvmSandbox makes a
 * volume group on loop devices of a DmSandbox, with its own configuration
 * directory (LVM_SYSTEM_DIR) so nothing on the host or in other tests is
 * seen or touched, and removes the VG, its dm devices and PV labels in
 * cleanup() — call it before the DmSandbox's (which detaches the loops).
 *
 * This configuration was found to work in the guest (lvm2 2.03, Debian 12):
 * no udev synchronisation or rules (LVM's libdevmapper makes the nodes),
 * the device list from a filter of exactly this sandbox's loops, no
 * devices file, no lvmpolld, no event activation or monitoring, no metadata
 * backups or archives, locks under /run.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type DmSandbox, type LoopDevice, MiB, run, type RunResult } from './helpers';

let counter = 0;

export interface LvmRunOptions {
  allowFail?: boolean;
  input?: string;
  timeoutMs?: number;
}

export class LvmSandbox {
  /** VG name: unique; without dashes unless `dashed` (dm names double them). */
  readonly vg: string;
  readonly confDir: string;
  /** Environment for lvm commands and for anything that runs `lvs` (dmthin send). */
  readonly env: NodeJS.ProcessEnv;
  readonly pvs: LoopDevice[] = [];
  private closed = false;

  constructor(
    private readonly sb: DmSandbox,
    o: { pvCount?: number; pvBytes?: number; dashed?: boolean } = {},
  ) {
    this.vg = `dmt${process.pid}${o.dashed ? '-vg-' : 'vg'}${++counter}`;
    this.confDir = join(sb.dir, `lvm-${this.vg}`);
    mkdirSync(this.confDir, { recursive: true });
    mkdirSync('/run/lock/lvm', { recursive: true });
    mkdirSync('/run/lvm', { recursive: true });
    for (let i = 0; i < (o.pvCount ?? 2); i++) this.pvs.push(sb.loop(o.pvBytes ?? 64 * MiB, `${this.vg}-pv`));
    const accept = this.pvs.map((p) => `"a|^${p.path}$|"`).join(', ');
    writeFileSync(
      join(this.confDir, 'lvm.conf'),
      `config { checks = 1 }
devices {
  obtain_device_list_from_udev = 0
  external_device_info_source = "none"
  use_devicesfile = 0
  filter = [ ${accept}, "r|.*|" ]
  global_filter = [ ${accept}, "r|.*|" ]
}
activation {
  udev_sync = 0
  udev_rules = 0
  verify_udev_operations = 0
  monitoring = 0
}
global {
  locking_dir = "/run/lock/lvm"
  use_lvmpolld = 0
  event_activation = 0
}
backup {
  backup = 0
  archive = 0
}
`,
    );
    this.env = { ...process.env, LVM_SYSTEM_DIR: this.confDir, LVM_SUPPRESS_FD_WARNINGS: '1' };
  }

  /** Runs `lvm <args>` with this sandbox's configuration. */
  lvm(args: string[], opts: LvmRunOptions = {}): RunResult {
    const r = spawnSync('lvm', args, { env: this.env, encoding: 'utf8', input: opts.input, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * MiB });
    if (r.error) throw new Error(`lvm ${args.join(' ')}: ${r.error.message}`);
    const res = { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    if (res.status !== 0 && !opts.allowFail) throw new Error(`lvm ${args.join(' ')} exited with ${r.status ?? r.signal}\n${(r.stderr || r.stdout).trim()}`);
    return res;
  }

  /** pvcreate + vgcreate over the sandbox's loops. */
  createVg(): void {
    const paths = this.pvs.map((p) => p.path);
    this.lvm(['pvcreate', '-y', '-ff', ...paths]);
    this.lvm(['vgcreate', this.vg, ...paths]);
  }

  /** `lvs` of this VG as objects (fields as lvs names them). */
  lvs(fields: string[], lv?: string): Record<string, string>[] {
    const out = this.lvm(['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-a', '-o', fields.join(','), lv ? `${this.vg}/${lv}` : this.vg]).stdout;
    const j = JSON.parse(out) as { report: { lv: Record<string, string>[] }[] };
    return j.report.flatMap((r) => r.lv);
  }

  /** One field of one LV. */
  lvField(lv: string, field: string): string {
    const [row] = this.lvs([field], lv);
    if (!row) throw new Error(`lvs lists no ${this.vg}/${lv}`);
    return String(row[field]).trim();
  }

  /** The dm name of an LV (dashes inside names doubled). */
  dmName(lv: string, suffix = ''): string {
    return `${this.vg.replace(/-/g, '--')}-${lv.replace(/-/g, '--')}${suffix}`;
  }

  /** /dev/mapper node of an active LV (made if the activation did not). */
  devPath(lv: string): string {
    const name = this.dmName(lv);
    run('dmsetup', ['mknodes', name]);
    return `/dev/mapper/${name}`;
  }

  /**
   * Deactivates and removes the VG, removes any dm device left with its
   * prefix and the PV labels. Tries every step; throws at the end if the VG
   * or a device is still there.
   */
  cleanup(): void {
    if (this.closed) return;
    this.closed = true;
    const problems: string[] = [];
    this.lvm(['vgchange', '-an', this.vg], { allowFail: true });
    this.lvm(['vgremove', '-ff', '-y', this.vg], { allowFail: true });
    const prefix = `${this.vg.replace(/-/g, '--')}-`;
    const left = run('dmsetup', ['ls'], { allowFail: true })
      .stdout.split('\n')
      .map((l) => l.split(/\s+/)[0])
      .filter((n) => n.startsWith(prefix));
    // Thin volumes first, then pools, then their sub-devices.
    const order = (n: string) => (n.endsWith('-tpool') ? 1 : /_t(meta|data)$/.test(n) ? 2 : 0);
    for (const n of left.sort((a, b) => order(a) - order(b))) {
      const r = run('dmsetup', ['remove', '--retry', n], { allowFail: true });
      if (r.status !== 0) problems.push(`dm device ${n}: ${r.stderr.trim()}`);
    }
    this.lvm(['pvremove', '-ff', '-y', ...this.pvs.map((p) => p.path)], { allowFail: true });
    if (this.lvm(['vgs', this.vg], { allowFail: true }).status === 0) problems.push(`VG ${this.vg} still exists`);
    if (problems.length) throw new Error(`LvmSandbox cleanup:\n  ${problems.join('\n  ')}`);
  }
}

/** Is lvm2 installed (the guest runs the host's binaries)? */
export function haveLvm(): boolean {
  return run('sh', ['-c', 'command -v lvm >/dev/null'], { allowFail: true }).status === 0;
}
