/**
 * Waiting for a dm device's event counter to move, cancellably and without a
 * worker thread.
 *
 * Why not DM_DEV_WAIT: that ioctl sleeps in the kernel until the event, so it
 * pins one of libuv's four worker threads for as long as nothing happens (four
 * waits starve every block read), and nothing can interrupt it short of
 * removing the device. Instead each wait opens its own descriptor on the
 * control node and uses DM_DEV_ARM_POLL (Linux 4.13+): after an arm, the
 * descriptor polls readable as soon as any dm device raises an event. The
 * readiness is awaited on the event loop (the addon's uv_poll), so a pending
 * wait costs one descriptor and no thread; an abort closes the descriptor and
 * the wait settles at once.
 *
 * One descriptor per wait rather than one shared poller: the arm is per
 * descriptor, so waits stay independent (no shared state to re-arm or to tear
 * down when one of them aborts), and a wakeup costs each waiter one
 * DM_DEV_STATUS, which is a few microseconds.
 *
 * Race-free order on every round: arm, read the counter, then wait. An event
 * after the arm makes the descriptor readable; one before it shows in the
 * counter. Readiness means "some device had an event", so the counter is read
 * again after each wakeup.
 *
 * Kernels without DM_DEV_ARM_POLL (the arm fails with ENOTTY, or EINVAL for
 * an interface older than 4.37) get the same loop with a timer instead of the
 * descriptor: the counter is read every `fallbackIntervalMs`.
 */
import { AbortError, throwIfAborted } from '../errors';

/** The source of wakeups: the addon's DmPoll, or a fake in tests. */
export interface DmEventPoller {
  /** DM_DEV_ARM_POLL on the poller's descriptor. */
  arm(): void;
  /** true when an event came after the last arm; false once close() was called. */
  readable(): Promise<boolean>;
  /** Idempotent; a pending readable() resolves false. */
  close(): void;
}

/** How a wait for a dm event may be cancelled, and how an old kernel is polled. */
export interface EventWaitOptions {
  /** Aborting rejects the wait with AbortError (code ABORT_ERR) at once. */
  signal?: AbortSignal;
  /**
   * Kernels before 4.13 (no DM_DEV_ARM_POLL): how often the event counter is
   * read instead. Default 1000 ms.
   */
  fallbackIntervalMs?: number;
}

const DEFAULT_FALLBACK_INTERVAL_MS = 1000;

function armUnsupported(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === 'ENOTTY' || code === 'EINVAL';
}

function aborted(signal: AbortSignal | undefined): AbortError {
  return new AbortError(undefined, { cause: signal?.reason });
}

/** Resolves after `ms`, or rejects with AbortError when the signal fires first. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(aborted(signal));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Resolves once `current()` (the device's event counter) differs from
 * `eventNr`. `openPoller` is called once; its errors (and those of
 * `current()`) reject the wait. The poller is closed whatever happens.
 */
export async function waitForEventChange(
  openPoller: () => DmEventPoller,
  current: () => Promise<number>,
  eventNr: number,
  opts: EventWaitOptions = {},
): Promise<void> {
  const { signal } = opts;
  throwIfAborted(signal);
  let poller: DmEventPoller | undefined = openPoller();
  const onAbort = () => poller?.close(); // a pending readable() resolves false
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      if (signal?.aborted) throw aborted(signal);
      if (poller) {
        try {
          poller.arm();
        } catch (err) {
          if (!armUnsupported(err)) throw err;
          poller.close();
          poller = undefined;
        }
      }
      if ((await current()) !== eventNr) return;
      if (signal?.aborted) throw aborted(signal);
      if (poller) {
        // false: closed, which only the abort listener does.
        if (!(await poller.readable())) throw aborted(signal);
      } else {
        await sleep(opts.fallbackIntervalMs ?? DEFAULT_FALLBACK_INTERVAL_MS, signal);
      }
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    poller?.close();
  }
}
