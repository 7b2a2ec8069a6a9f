/** Device-mapper control: ioctls, and the thin-pool / thin targets. */
export * from './ioctl';
export * from './device-mapper';
export * from './targets/args';
export * from './targets/thin-pool';
export * from './targets/thin';
export type { DmEventPoller, EventWaitOptions } from './event-wait';
