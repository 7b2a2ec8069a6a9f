/**
 * The one progress bar of the CLI: on stderr, only when asked for (by default
 * when stderr is a terminal), redrawn at most every 100 ms.
 */
import type { SingleBar } from 'cli-progress';
import { fstatSync } from 'node:fs';

/**
 * stderr is a terminal. Not `process.stderr.isTTY`: reading process.stderr
 * creates it, and for a pipe that loads net and the stream modules (~6 ms of
 * start-up) in a run that may never write there. A terminal is a character
 * device; only for one is node:tty asked.
 */
export function stderrIsTTY(): boolean {
  try {
    if (!fstatSync(2).isCharacterDevice()) return false;
  } catch {
    return false;
  }
  return (require('node:tty') as typeof import('node:tty')).isatty(2);
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
  stop(): void {
    if (this.bar && this.last !== 0) this.bar.stop();
    this.bar = undefined;
  }
}
