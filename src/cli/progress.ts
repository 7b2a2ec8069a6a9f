/**
 * The one progress bar of the CLI: on stderr, only when asked for (by default
 * when stderr is a terminal), redrawn at most every 100 ms.
 */
import type { SingleBar } from 'cli-progress';
import { fstatSync } from 'node:fs';
import { isMemoryDevice } from '../output/fd-writer';

/**
 * Descriptor `fd` is a terminal. Not `process.stderr.isTTY` (or stdout's):
 * reading process.stderr creates it, and for a pipe or a file that loads
 * net, tty and the stream modules (~6 ms of start-up) in a run that may
 * never write there; node:tty itself loads net. A terminal is a character
 * device, and not one of major 1 (/dev/null, /dev/zero, /dev/full, the
 * random devices: where a benchmark or a script sends output); only for
 * another is node:tty asked.
 */
export function fdIsTTY(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    if (!st.isCharacterDevice() || isMemoryDevice(st)) return false;
  } catch {
    return false;
  }
  return (require('node:tty') as typeof import('node:tty')).isatty(fd);
}

/** stderr is a terminal (see fdIsTTY). */
export function stderrIsTTY(): boolean {
  return fdIsTTY(2);
}

/**
 * A bar for a command that writes its output to stdout while it works
 * (dump, rmap): only when stderr is a terminal and stdout is not one. On the
 * same screen the output's lines would run into the bar, and the bar's
 * teardown (back to where it was drawn) would land inside them.
 */
export function barBesideOutput(outputToStdout: boolean): boolean {
  return stderrIsTTY() && !(outputToStdout && fdIsTTY(1));
}

export class Progress {
  private bar?: SingleBar;
  private last = 0;
  constructor(
    private readonly label: string,
    enabled = stderrIsTTY(),
  ) {
    if (enabled) {
      // Loaded only for a terminal: startup time matters for a CLI.
      const { SingleBar: Bar } = require('cli-progress') as typeof import('cli-progress');
      this.bar = new Bar({
        stream: process.stderr,
        format: `${label} [{bar}] {percentage}% | {value}/{total} {unit}`,
        hideCursor: true,
        clearOnComplete: true,
        fps: 10,
      });
    }
  }
  /** `value` of `total` `unit`s; an unknown total follows the value. */
  update(value: number, total: number | undefined, unit = 'mappings'): void {
    if (!this.bar) return;
    const now = Date.now();
    if (this.last === 0) this.bar.start(Math.max(total ?? value, 1), 0, { unit });
    if (now - this.last < 100) return;
    this.last = now;
    this.bar.setTotal(Math.max(total ?? value, value, 1));
    this.bar.update(value, { unit });
  }
  /** Ends the bar on screen; the next update() draws it again (a command's next phase). */
  pause(): void {
    if (this.bar && this.last !== 0) this.bar.stop();
    this.last = 0;
  }
  /** Ends the bar for good: later updates draw nothing. */
  stop(): void {
    this.pause();
    this.bar = undefined;
  }
}
