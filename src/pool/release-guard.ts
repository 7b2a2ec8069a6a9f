/**
 * Keeps the promise that a reserved metadata snapshot is released, also when
 * the process is interrupted or dies: while one is held, SIGINT/SIGTERM/SIGHUP
 * release it and then let the signal do what it would have done, and an exit
 * (also after an uncaught exception) releases it synchronously.
 * Only SIGKILL (or a power cut) can leave one held, as with any tool.
 */
export interface Releasable {
  /** Idempotent async release. */
  release(): Promise<void>;
  /** Best-effort release on the calling thread (exit path). */
  releaseSync(): void;
}

const held = new Set<Releasable>();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let installed = false;

function onExit(): void {
  for (const h of [...held]) {
    try {
      h.releaseSync();
    } catch {
      // nothing more can be done while exiting
    }
  }
  held.clear();
}

function onSignal(sig: NodeJS.Signals): void {
  const pending = [...held].map((h) => h.release().catch(() => undefined));
  void Promise.all(pending).then(() => {
    // Ours were the only listeners: re-deliver so the default action (exit
    // with 128+n) happens as if we had never been here.
    const others = process.listeners(sig).filter((l) => l !== onSignal);
    uninstall();
    if (others.length === 0) process.kill(process.pid, sig);
  });
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  process.off('exit', onExit);
  for (const s of SIGNALS) process.off(s, onSignal);
}

export function guard(r: Releasable): void {
  held.add(r);
  install();
}

export function unguard(r: Releasable): void {
  held.delete(r);
  if (held.size === 0) uninstall();
}

/** Snapshots currently guarded (for tests). */
export function guardedCount(): number {
  return held.size;
}
