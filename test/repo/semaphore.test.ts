/**
 * The repository's one concurrency limit (S3 requests, commit look-ups, backup
 * uploads): slots bounded, waiters served in order, an abort while waiting
 * takes no slot, idle() only when nothing is held.
 */
import { Semaphore } from '../../src/repo/semaphore';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('at most n holders; waiters get slots in the order they asked', async () => {
  const s = new Semaphore(2);
  const a = s.tryTake();
  const b = s.tryTake();
  expect(a).not.toBeNull();
  expect(b).not.toBeNull();
  expect(s.tryTake()).toBeNull();
  const order: string[] = [];
  const c = s.take().then((r) => (order.push('c'), r));
  const d = s.take().then((r) => (order.push('d'), r));
  await tick();
  expect(order).toEqual([]);
  a!();
  a!(); // a second call gives nothing back
  await tick();
  expect(order).toEqual(['c']);
  expect(s.tryTake()).toBeNull();
  b!();
  await tick();
  expect(order).toEqual(['c', 'd']);
  (await c)();
  (await d)();
  expect(s.tryTake()).not.toBeNull();
});

test('an abort while waiting is AbortError, and the slot goes to the next waiter', async () => {
  const s = new Semaphore(1);
  const held = s.tryTake()!;
  const ac = new AbortController();
  const aborted = s.take(ac.signal);
  const next = s.take();
  ac.abort();
  await expect(aborted).rejects.toMatchObject({ code: 'ABORT_ERR' });
  held();
  const r = await next;
  expect(s.tryTake()).toBeNull();
  r();
  await expect(s.take(AbortSignal.abort())).rejects.toMatchObject({ code: 'ABORT_ERR' });
  expect(s.tryTake()).not.toBeNull();
});

test('idle() settles once every slot is back', async () => {
  const s = new Semaphore(3);
  await s.idle();
  const a = s.tryTake()!;
  const b = await s.take();
  let idle = false;
  void s.idle().then(() => (idle = true));
  a();
  await tick();
  expect(idle).toBe(false);
  b();
  await tick();
  expect(idle).toBe(true);
});

test('run() gives the slot back when the function throws', async () => {
  const s = new Semaphore(1);
  await expect(s.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  expect(await s.run(() => Promise.resolve(7))).toBe(7);
});
