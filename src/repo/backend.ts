/**
 * Where a backup repository's objects live: a local directory or an S3
 * bucket. A backend stores opaque objects under slash-separated keys and knows
 * nothing of chunks, manifests or encryption (src/repo/repository.ts does).
 * Every backend passes the one contract suite (test/repo/backend-contract.ts).
 *
 * Keys: ASCII, `[A-Za-z0-9._/-]`, no leading slash, no `.` or `..` segment,
 * at most 512 bytes. A backend rejects any other key with RepoError 'config'.
 */

/** An object as a listing reports it. */
export interface ObjectInfo {
  /** The key, relative to the repository's root (never the S3 prefix). */
  key: string;
  /** Size in bytes. */
  size: number;
  /** Last modification, in milliseconds since the epoch. */
  mtimeMs: number;
}

/** Options every backend call takes. */
export interface BackendCallOptions {
  /** Cancels the call, which then rejects with AbortError. */
  signal?: AbortSignal;
}

/** Options of Backend.get and getStream. */
export interface GetOptions extends BackendCallOptions {
  /**
   * The largest this object can be (the caller knows its kind's bound): a
   * larger one is refused as RepoError 'corrupt' before it is read, so a
   * damaged or hostile object cannot exhaust memory. get's default:
   * MAX_GET_BYTES; getStream's: none (its memory is one piece at a time).
   */
  maxBytes?: number;
}

/** The largest object get() reads when no maxBytes is given: any envelope (256 MiB of plaintext, its framing). */
export const MAX_GET_BYTES = 256 * 1024 * 1024 + 64;

/** Options of Backend.put. */
export interface PutOptions extends BackendCallOptions {
  /**
   * Only create: if the key already exists, leave it and resolve `false`.
   * (Content-addressed chunks use it: an existing chunk is never rewritten.)
   */
  ifAbsent?: boolean;
  /**
   * With ifAbsent: the caller has just found the key absent (stat), so a
   * backend skips its own existence check before the upload; the write stays
   * conditional where the store supports it. Saves a request per new chunk on S3.
   */
  checkedAbsent?: boolean;
  /** The body's length when it is a stream and known (lets S3 skip multipart for small objects). */
  size?: number;
  /**
   * The put belongs to work that frees space (deleting backups, garbage
   * collection, removing damaged chunks): a local directory that is full
   * gives up its space reserve (keepReserve) for it rather than fail, so a
   * repository that filled its filesystem can still be pruned.
   */
  freesSpace?: boolean;
}

/**
 * The contract. Atomicity: a reader sees an object either whole or not at
 * all, never a prefix, also after a crash of the writer (local: temporary
 * file, fsync, rename, directory fsync; S3: a PUT or a completed multipart
 * upload is atomic). Durability: put and delete have reached stable storage
 * when their promise resolves. Errors: RepoError (src/errors.ts) with reason
 * 'not-found' for an absent key, 'corrupt' for an object larger than
 * maxBytes or (local) not a regular file, 'backend' for a store failure after the
 * backend's own retries, 'config' for a bad key; AbortError on abort.
 */
export interface Backend extends AsyncDisposable {
  /** For messages: the directory path or `s3://bucket/prefix`. */
  readonly location: string;
  /**
   * Local directories only: removes the temporary files of writes that never
   * completed (a writer killed mid-put), older than `olderThanMs`, outside
   * the top-level folders named in `except`; resolves to how many. Garbage
   * collection calls it under the exclusive lock.
   */
  sweepTemporary?(olderThanMs: number, opts?: { except?: readonly string[] }): Promise<number>;
  /**
   * Local directories only: makes the deletions already made under `prefix`
   * durable (fsyncs its directory). Garbage collection calls it for
   * backups/ before it reads the manifests: a header whose delete was never
   * made durable (its directory's fsync failed) could come back after a
   * crash, naming chunks the collection had deleted.
   */
  syncPrefix?(prefix: string, opts?: BackendCallOptions): Promise<void>;
  /**
   * Local directories only: makes sure the space reserve is there (a small
   * file no listing shows, given up by a `freesSpace` put that finds the
   * filesystem full). Best effort: without room it is simply not made.
   */
  keepReserve?(): Promise<void>;
  /** Stores an object. A body stream is consumed once and never buffered whole (S3: multipart above a part size). Resolves true when written, false when `ifAbsent` found the key. */
  put(key: string, body: Uint8Array | AsyncIterable<Uint8Array>, opts?: PutOptions): Promise<boolean>;
  /** The whole object (for objects known to be small: chunks, configs, locks). */
  get(key: string, opts?: GetOptions): Promise<Buffer>;
  /** The object as a stream of pieces, for objects of any size (manifests). */
  getStream(key: string, opts?: GetOptions): AsyncIterable<Buffer>;
  /** Size and time of an object, or null when it does not exist. */
  stat(key: string, opts?: BackendCallOptions): Promise<ObjectInfo | null>;
  /** Every object whose key starts with `prefix`, in no promised order; memory bounded (pages). */
  list(prefix: string, opts?: BackendCallOptions): AsyncIterable<ObjectInfo>;
  /** Deletes objects; absent keys are not an error. */
  delete(keys: readonly string[], opts?: BackendCallOptions): Promise<void>;
  /** Releases connections and descriptors. */
  close(): Promise<void>;
}
