/**
 * The Backend contract (backend.ts) over S3 or an S3-compatible store (Ceph
 * radosgw, MinIO...), through `@aws-sdk/client-s3`. Endpoint, region and
 * credentials come from the standard AWS environment and config files
 * (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/{config,credentials}).
 *
 * - Bodies are sent from buffers we hold: below the part size one PUT, above
 *   it a multipart upload whose parts are read from the stream one ahead of the
 *   one being sent (two parts in memory per put, never the whole object); a
 *   failed multipart upload is aborted so no part lingers.
 * - Every request takes a slot of a per-backend semaphore (bounded
 *   concurrency; a put holds no slot between its parts, so puts cannot
 *   starve each other's parts).
 * - Retries are ours (the SDK's are off so that the count is known): throttling
 *   (429, 503 SlowDown), 408, other 5xx and connection errors are retried with
 *   exponential backoff and jitter: by default 8 attempts, delays of 200 ms
 *   doubling up to 5 s, each half fixed and half random, so 8.1-16.2 s of
 *   waiting before giving up (a gateway restart is ridden out). Anything still
 *   failing, and any other error at once, is a RepoError 'backend' (EIO) with
 *   the key, `s3Code`, `httpStatus` and `attempts`; an absent bucket and
 *   missing credentials are 'config'; an absent key is 'not-found'.
 * - A read that breaks mid-body resumes from the byte it reached (Range, with
 *   If-Match on the first response's ETag so a replaced object is not spliced).
 * - ifAbsent: HEAD, then PUT with If-None-Match: * (see put()). A write whose
 *   answer was lost is retried; if the retry finds the key taken, the object's
 *   ETag (the MD5 of what we sent) tells our own write from another writer's.
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type HeadObjectCommandOutput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { AbortError, RepoError } from '../errors';
import { Semaphore } from './semaphore';
import { MAX_GET_BYTES, type Backend, type BackendCallOptions, type GetOptions, type ObjectInfo, type PutOptions } from './backend';

/** Tuning of an S3 backend; every field has a default meant for real use. */
export interface S3BackendOptions {
  /** Bytes per multipart part, and the size up to which one PUT is used (default 8 MiB; S3 refuses parts below 5 MiB but the last). */
  partSize?: number;
  /** Requests in flight at once through this backend (default 16). */
  concurrency?: number;
  /** Tries per request, the first included (default 8). */
  maxAttempts?: number;
  /** First backoff delay in ms; doubles per retry (default 200). */
  baseDelayMs?: number;
  /** Upper bound of one backoff delay in ms (default 5000). */
  maxDelayMs?: number;
  /** Keys per listing page (default 1000, S3's maximum). */
  listPageSize?: number;
  /**
   * How long a request may wait for its response to begin (ms, default
   * 120000), plus the time its body takes at `minUploadRate`; then it fails
   * and is retried. A response body being read may wait as long for each of
   * its pieces (then it is resumed where it stopped); the time its reader
   * takes between pieces is not counted (a reader may pause).
   */
  responseTimeoutMs?: number;
  /** The slowest upload, in bytes per second per request, that is waited for (default 8192). */
  minUploadRate?: number;
  /** Told of each retry before its backoff (for logs and tests). */
  onRetry?: (info: S3RetryInfo) => void;
}

/** One retry of an S3 request, as S3BackendOptions.onRetry reports it. */
export interface S3RetryInfo {
  /** The request (`put`, `part 3 upload`, `get`...). */
  op: string;
  /** The object's key (relative to the repository's root). */
  key: string;
  /** The attempt that failed (1 = the first). */
  attempt: number;
  /** The backoff before the next attempt, in ms. */
  delayMs: number;
  /** The S3 error code or connection error that caused it. */
  code: string;
}

const MIB = 1024 * 1024;
const DEFAULTS = { partSize: 8 * MIB, concurrency: 16, maxAttempts: 8, baseDelayMs: 200, maxDelayMs: 5000, listPageSize: 1000, responseTimeoutMs: 120_000, minUploadRate: 8192 };
type Tuning = typeof DEFAULTS & Pick<S3BackendOptions, 'onRetry'>;
const MAX_PARTS = 10000; // S3's limit per multipart upload
const DELETE_BATCH = 1000; // S3's limit per DeleteObjects
const KEY_RE = /^[A-Za-z0-9._/-]+$/;
const MAX_KEY = 512;

/** Throws RepoError 'config' unless `key` obeys backend.ts's key rules. */
function checkKey(key: string, what = 'key'): void {
  const ok =
    typeof key === 'string' &&
    key.length > 0 &&
    key.length <= MAX_KEY &&
    KEY_RE.test(key) &&
    !key.startsWith('/') &&
    key.split('/').every((s) => s !== '' && s !== '.' && s !== '..');
  if (!ok) {
    throw new RepoError('config', `invalid object ${what} ${JSON.stringify(key)}: keys are 1-512 characters of [A-Za-z0-9._/-], with no empty, "." or ".." segment (so no leading or trailing slash)`, { key: String(key) });
  }
}

/** A list prefix: '', a key, or a key and a trailing slash. */
function checkPrefix(prefix: string): void {
  if (prefix === '') return;
  checkKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix, 'prefix');
}

interface S3ErrorLike {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

function s3Code(e: unknown): string {
  const x = e as S3ErrorLike;
  return x?.Code ?? x?.name ?? x?.code ?? 'Error';
}

function httpStatus(e: unknown): number | undefined {
  return (e as S3ErrorLike)?.$metadata?.httpStatusCode;
}

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'ECONNABORTED', 'UND_ERR_SOCKET']);

/** Throttling, server faults and broken connections are worth another try; client errors are not. */
function retryable(e: unknown): boolean {
  const status = httpStatus(e);
  if (status !== undefined) return status === 429 || status === 408 || status >= 500;
  const x = e as S3ErrorLike;
  const code = x?.code ?? x?.name ?? '';
  if (CONNECTION_CODES.has(code)) return true;
  if (code === 'TimeoutError' || code === 'RequestTimeout' || code === 'SlowDown' || code === 'InternalError' || code === 'ServiceUnavailable') return true;
  // A response that ended early or could not be parsed (the server went away mid-body).
  return /socket hang up|ECONNRESET|ECONNREFUSED|aborted|premature close|EPIPE/i.test(x?.message ?? '');
}

function md5Hex(b: Uint8Array): string {
  return createHash('md5').update(b).digest('hex');
}

/** S3's ETag of a multipart object: the MD5 of its parts' binary MD5s, then "-" and the part count. */
function multipartEtag(parts: { ETag: string }[]): string {
  const h = createHash('md5');
  for (const p of parts) h.update(Buffer.from(p.ETag.replace(/"/g, ''), 'hex'));
  return `${h.digest('hex')}-${parts.length}`;
}

function isAbort(e: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || (e as S3ErrorLike)?.name === 'AbortError';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortError(undefined, { cause: signal.reason }));
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new AbortError(undefined, { cause: signal?.reason }));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The SDK's client constructor warns once per process that future SDK
 * versions need Node 22 (NodeVersionSupportWarning). That says nothing about
 * this backup and would be printed on every CLI run, so the SDK's own switch
 * for it is set for the constructor's duration only: other warnings, and a
 * user's own setting of the variable, are untouched.
 */
function quietClient(config: S3ClientConfig): S3Client {
  const VAR = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';
  const before = process.env[VAR];
  if (before === undefined) process.env[VAR] = 'true';
  try {
    return new S3Client(config);
  } finally {
    if (before === undefined) delete process.env[VAR];
  }
}

/** Pieces of a body, normalised to Uint8Array. */
async function* pieces(body: Uint8Array | AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  if (body instanceof Uint8Array) {
    yield body;
    return;
  }
  for await (const p of body) yield p;
}

/** Reads a body into buffers of exactly `size` bytes (the last may be shorter); holds one buffer at a time. */
async function* parts(body: Uint8Array | AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  let buf = Buffer.allocUnsafe(size);
  let fill = 0;
  for await (const p of pieces(body)) {
    let off = 0;
    while (off < p.length) {
      const n = Math.min(size - fill, p.length - off);
      buf.set(p.subarray(off, off + n), fill);
      fill += n;
      off += n;
      if (fill === size) {
        yield buf;
        buf = Buffer.allocUnsafe(size);
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill);
}

/** The Backend over one bucket and key prefix. */
class S3Backend implements Backend {
  readonly location: string;
  private readonly root: string;
  private readonly sem: Semaphore;
  private readonly o: Tuning;

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    prefix: string,
    opts: Tuning,
  ) {
    this.root = prefix === '' ? '' : `${prefix}/`;
    this.location = `s3://${bucket}/${prefix}`;
    this.sem = new Semaphore(opts.concurrency);
    this.o = opts;
  }

  private s3Key(key: string): string {
    return this.root + key;
  }

  /**
   * One S3 request with a semaphore slot and our retry policy. `what` and
   * `key` name the failure. `notRetried` lets a caller treat some answers
   * (404, 412) as results instead of failures.
   */
  private async call<T>(what: string, key: string, signal: AbortSignal | undefined, fn: (signal: AbortSignal | undefined) => Promise<T>, passThrough?: (e: unknown) => boolean): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      const release = await this.sem.take(signal);
      let code: string;
      try {
        return await fn(signal);
      } catch (e) {
        if (isAbort(e, signal)) throw new AbortError(undefined, { cause: signal?.reason ?? e });
        if (e instanceof RepoError || passThrough?.(e)) throw e;
        if (!retryable(e) || attempt >= this.o.maxAttempts) throw this.failure(what, key, e, attempt);
        code = s3Code(e);
      } finally {
        release();
      }
      // Exponential backoff, "equal jitter": half the delay is fixed so the
      // total wait before giving up has a known floor, half is random so
      // many writers do not retry in step.
      const d = Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** (attempt - 1));
      const delayMs = Math.round(d / 2 + Math.random() * (d / 2));
      this.o.onRetry?.({ op: what, key, attempt, delayMs, code });
      await sleep(delayMs, signal);
    }
  }

  /** A request's options: its abort signal, and its deadline for the response to begin (responseTimeoutMs, plus its body at minUploadRate). */
  private http(signal: AbortSignal | undefined, bodyBytes = 0): { abortSignal?: AbortSignal; requestTimeout: number } {
    return { abortSignal: signal, requestTimeout: this.o.responseTimeoutMs + Math.ceil((bodyBytes * 1000) / this.o.minUploadRate) };
  }

  private failure(what: string, key: string, e: unknown, attempts: number): RepoError {
    const code = s3Code(e);
    const status = httpStatus(e);
    const detail = `${code}${status !== undefined ? ` (HTTP ${status})` : ''}${(e as S3ErrorLike)?.message && (e as S3ErrorLike).message !== code ? `: ${(e as S3ErrorLike).message}` : ''}`;
    const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
    if (code === 'NoSuchBucket') {
      return new RepoError('config', `S3 bucket ${this.bucket} does not exist (${this.location}): create it first or check AWS_ENDPOINT_URL`, { key, s3Code: code, httpStatus: status, cause: e });
    }
    if (code === 'CredentialsProviderError') {
      return new RepoError('config', `no S3 credentials for ${this.location}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials`, { key, s3Code: code, cause: e });
    }
    return new RepoError('backend', `S3 ${what} of ${key} in ${this.location} failed${tries}: ${detail}`, { key, s3Code: code, httpStatus: status, attempts, cause: e });
  }

  async put(key: string, body: Uint8Array | AsyncIterable<Uint8Array>, opts: PutOptions = {}): Promise<boolean> {
    checkKey(key);
    const { signal, ifAbsent, checkedAbsent } = opts;
    if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
    const Key = this.s3Key(key);
    // ifAbsent: HEAD first (an existing chunk costs no upload), then the write
    // carries If-None-Match: * where the store honours it (radosgw 16 does on
    // PUT). Where it does not, two writers racing between HEAD and PUT both
    // write; for content-addressed chunks both bodies are the same bytes, so
    // the race is harmless.
    // (Skipped when the caller has just done that HEAD itself: checkedAbsent.)
    if (ifAbsent && !checkedAbsent && (await this.stat(key, { signal })) !== null) return false;
    const cond = ifAbsent ? { IfNoneMatch: '*' } : {};
    // 412 is an answer only to our If-None-Match; otherwise it is a failure like any other.
    const precondition = ifAbsent ? (e: unknown): boolean => httpStatus(e) === 412 : undefined;
    const it = parts(body, this.o.partSize);
    const first = await it.next();
    const firstBuf = first.done ? Buffer.alloc(0) : first.value;
    const second = first.done ? first : await it.next();
    let tries = 0;
    try {
      if (second.done) {
        await this.call(
          'put',
          key,
          signal,
          (s) => {
            tries++;
            return this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: firstBuf, ContentLength: firstBuf.length, ...cond }), this.http(s, firstBuf.length));
          },
          precondition,
        );
        return true;
      }
      return await this.multipart(key, Key, firstBuf, second.value, it, cond, precondition, signal);
    } catch (e) {
      if (!precondition?.(e)) throw e;
      // A 412 on a retry may answer our own earlier attempt, whose write
      // landed but whose answer was lost (the gateway died after storing).
      return tries > 1 && (await this.holds(key, md5Hex(firstBuf), signal));
    } finally {
      await it.return(undefined);
    }
  }

  /** A multipart upload: the next part is read while the current one is sent; aborted on any failure. */
  private async multipart(key: string, Key: string, p1: Buffer, p2: Buffer, rest: AsyncGenerator<Buffer>, cond: { IfNoneMatch?: string }, precondition: ((e: unknown) => boolean) | undefined, signal?: AbortSignal): Promise<boolean> {
    const created = await this.call('multipart create', key, signal, (s) => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key }), this.http(s)));
    const UploadId = created.UploadId;
    if (!UploadId) throw new RepoError('backend', `S3 multipart create of ${key} in ${this.location} returned no upload id`, { key });
    const done: { PartNumber: number; ETag: string }[] = [];
    const send = async (n: number, buf: Buffer): Promise<void> => {
      const r = await this.call(`part ${n} upload`, key, signal, (s) => this.client.send(new UploadPartCommand({ Bucket: this.bucket, Key, UploadId, PartNumber: n, Body: buf, ContentLength: buf.length }), this.http(s, buf.length)));
      if (!r.ETag) throw new RepoError('backend', `S3 part ${n} upload of ${key} in ${this.location} returned no ETag`, { key });
      done.push({ PartNumber: n, ETag: r.ETag });
    };
    try {
      let n = 1;
      // Each in-flight promise gets a handler at once: it may reject while the
      // next part is being read, and must not count as unhandled then.
      let inFlight = send(n, p1);
      inFlight.catch(() => undefined);
      let next: Buffer | undefined = p2;
      while (next) {
        // Read the part after `next` only once `next` may be sent: at most
        // two parts are held (the one in flight and the one being filled).
        await inFlight;
        n++;
        if (n > MAX_PARTS) throw new RepoError('backend', `${key} is larger than ${MAX_PARTS} parts of ${this.o.partSize} bytes`, { key });
        inFlight = send(n, next);
        inFlight.catch(() => undefined);
        const r = await rest.next().catch(async (e: unknown) => {
          await inFlight.catch(() => undefined);
          throw e;
        });
        next = r.done ? undefined : r.value;
      }
      await inFlight;
      done.sort((a, b) => a.PartNumber - b.PartNumber);
      // The complete response's ETag is empty on radosgw 16 (a known bug): not used.
      let tries = 0;
      const gone = (e: unknown): boolean => s3Code(e) === 'NoSuchUpload';
      try {
        await this.call(
          'multipart complete',
          key,
          signal,
          (s) => {
            tries++;
            return this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId, MultipartUpload: { Parts: done }, ...cond }), this.http(s));
          },
          (e) => precondition?.(e) === true || gone(e),
        );
        return true;
      } catch (e) {
        if (!precondition?.(e) && !gone(e)) throw e;
        // A retried complete whose lost first attempt landed: radosgw answers
        // it again with success, AWS may answer NoSuchUpload, a store that
        // honours If-None-Match here 412. The object's ETag tells.
        if (tries > 1 && (await this.holds(key, multipartEtag(done), signal))) return true;
        throw gone(e) ? this.failure('multipart complete', key, e, tries) : e;
      }
    } catch (e) {
      // Best effort, without the caller's signal (an abort must still clean up);
      // a store that stays down keeps the parts until its lifecycle rule.
      await this.call('multipart abort', key, undefined, () => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId }), this.http(undefined))).catch(() => undefined);
      throw e;
    }
  }

  /**
   * Whether the object at `key` is the one whose ETag we computed: after an
   * attempt whose answer was lost, it tells our write from another writer's.
   * In an encrypted repository every object's random nonce makes another
   * writer's bytes, hence ETag, differ. A store whose ETag is not the MD5
   * (AWS under SSE-KMS) never matches: the write then counts as another's.
   */
  private async holds(key: string, etag: string, signal: AbortSignal | undefined): Promise<boolean> {
    return (await this.head(key, signal))?.ETag?.replace(/"/g, '').toLowerCase() === etag;
  }

  /** HEAD of `key`, null when absent. */
  private async head(key: string, signal: AbortSignal | undefined): Promise<HeadObjectCommandOutput | null> {
    const Key = this.s3Key(key);
    try {
      return await this.call('stat', key, signal, (s) => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }), this.http(s)), (e) => httpStatus(e) === 404);
    } catch (e) {
      if (httpStatus(e) === 404) return null;
      throw e;
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<Buffer> {
    const out: Buffer[] = [];
    for await (const p of this.getStream(key, { ...opts, maxBytes: opts.maxBytes ?? MAX_GET_BYTES })) out.push(p);
    return Buffer.concat(out);
  }

  async *getStream(key: string, opts: GetOptions = {}): AsyncIterable<Buffer> {
    checkKey(key);
    const { signal } = opts;
    const Key = this.s3Key(key);
    let offset = 0;
    let etag: string | undefined;
    // A body that breaks mid-way is resumed from where it broke (Range, and
    // If-Match so a replaced object is not spliced onto the old one).
    for (let resumes = 0; ; resumes++) {
      const r = await this.call('get', key, signal, (s) =>
        this.client.send(
          new GetObjectCommand({ Bucket: this.bucket, Key, ...(offset > 0 ? { Range: `bytes=${offset}-`, IfMatch: etag } : {}) }),
          this.http(s),
        ),
      ).catch((e: unknown) => {
        throw this.notFound(e, key);
      });
      etag ??= r.ETag;
      // A resumed body must start where the last one stopped: a server that ignored the Range would splice the object's start in.
      if (offset > 0 && !r.ContentRange?.startsWith(`bytes ${offset}-`)) {
        (r.Body as { destroy?: () => void } | undefined)?.destroy?.();
        throw new RepoError('backend', `${this.location} answered a resumed get of ${key} from byte ${offset} with ${r.ContentRange ? `range ${r.ContentRange}` : 'the whole object'}: it does not honour Range requests`, { key });
      }
      // Refused before its body is read (and the body is counted: a length can be absent or lie).
      const tooLong = (n: number) =>
        new RepoError('corrupt', `${key} in ${this.location} is ${n} bytes or more, more than the ${opts.maxBytes} such an object can have; the object is damaged or was replaced`, { key });
      if (opts.maxBytes !== undefined && offset + (r.ContentLength ?? 0) > opts.maxBytes) throw tooLong(offset + (r.ContentLength ?? 0));
      const body = r.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
      if (!body) return;
      const pieces = body[Symbol.asyncIterator]();
      try {
        for (;;) {
          const next = await this.nextPiece(pieces, key, () => body.destroy?.());
          if (next.done) break;
          const p = next.value;
          // The SDK's abort covers the request, not a body being read.
          if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
          offset += p.length;
          if (opts.maxBytes !== undefined && offset > opts.maxBytes) throw tooLong(offset);
          yield Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.length);
        }
        return;
      } catch (e) {
        if (e instanceof AbortError || (e instanceof RepoError && e.reason === 'corrupt')) throw e; // (an over-long body: not retried)
        if (isAbort(e, signal)) throw new AbortError(undefined, { cause: signal?.reason ?? e });
        if (!retryable(e) || resumes + 1 >= this.o.maxAttempts) throw this.failure('get', key, e, resumes + 1);
        this.o.onRetry?.({ op: 'get (resumed)', key, attempt: resumes + 1, delayMs: 0, code: s3Code(e) });
      }
    }
  }

  /**
   * The body's next piece, within responseTimeoutMs: a server that stops
   * sending mid-body would otherwise hold the reader for ever. Only the wait
   * for a piece is timed, not the time the reader takes between pieces (a
   * paused reader stops the server through TCP's window, not the other way
   * round). A stall destroys the body and is retried from where it stopped.
   */
  private async nextPiece(pieces: AsyncIterator<Uint8Array>, key: string, destroy: () => void): Promise<IteratorResult<Uint8Array>> {
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        destroy();
        reject(Object.assign(new Error(`the body of ${key} stopped arriving for ${this.o.responseTimeoutMs} ms`), { name: 'TimeoutError' }));
      }, this.o.responseTimeoutMs);
    });
    try {
      return await Promise.race([pieces.next(), stalled]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A 404 on get is the contract's 'not-found'; a 412 on a resumed get means the object was replaced under us. */
  private notFound(e: unknown, key: string): unknown {
    const code = e instanceof RepoError ? ((e as RepoError & { s3Code?: string }).s3Code ?? '') : '';
    if (code === 'NoSuchKey' || code === 'NotFound') {
      return new RepoError('not-found', `object ${key} not found in ${this.location}`, { key, cause: e });
    }
    return e;
  }

  async stat(key: string, opts: BackendCallOptions = {}): Promise<ObjectInfo | null> {
    checkKey(key);
    const r = await this.head(key, opts.signal);
    return r && { key, size: r.ContentLength ?? 0, mtimeMs: r.LastModified?.getTime() ?? 0 };
  }

  async *list(prefix: string, opts: BackendCallOptions = {}): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    const { signal } = opts;
    let token: string | undefined;
    do {
      const r = await this.call('list', prefix || '(all)', signal, (s) =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root + prefix, ContinuationToken: token, MaxKeys: this.o.listPageSize }), this.http(s)),
      );
      for (const o of r.Contents ?? []) {
        if (!o.Key?.startsWith(this.root)) continue;
        yield { key: o.Key.slice(this.root.length), size: o.Size ?? 0, mtimeMs: o.LastModified?.getTime() ?? 0 };
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(keys: readonly string[], opts: BackendCallOptions = {}): Promise<void> {
    for (const k of keys) checkKey(k);
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      const r = await this.call('delete', batch[0]!, opts.signal, (s) =>
        this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((k) => ({ Key: this.s3Key(k) })), Quiet: true } }),
          this.http(s),
        ),
      );
      const errs = (r.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      if (errs.length) {
        const e = errs[0]!;
        const key = e.Key?.startsWith(this.root) ? e.Key.slice(this.root.length) : (e.Key ?? '');
        throw new RepoError('backend', `S3 delete of ${key} in ${this.location} failed: ${e.Code ?? 'Error'}${e.Message ? `: ${e.Message}` : ''} (${errs.length} of ${batch.length} keys in the batch not deleted)`, { key, s3Code: e.Code });
      }
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Opens the S3 backend for `s3://bucket/prefix`. The bucket must exist; the
 * prefix may be empty. Path-style addressing is used when an endpoint is set
 * in the environment (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL: Ceph, MinIO and
 * most self-hosted stores need it). Without a region anywhere and with an
 * endpoint, `us-east-1` is used (self-hosted stores ignore it).
 */
export async function createS3Backend(bucket: string, prefix: string, options: S3BackendOptions = {}): Promise<Backend> {
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new RepoError('config', `invalid S3 bucket name ${JSON.stringify(bucket)}: 3-63 characters of a-z, 0-9, '.' and '-'`);
  }
  const pfx = prefix.replace(/^\/+|\/+$/g, '');
  if (pfx !== '') checkKey(pfx, 'prefix');
  const o: Tuning = { ...DEFAULTS, ...options };
  for (const k of ['partSize', 'concurrency', 'maxAttempts', 'baseDelayMs', 'maxDelayMs', 'listPageSize', 'responseTimeoutMs', 'minUploadRate'] as const) {
    const v = o[k];
    if (!Number.isSafeInteger(v) || v < (k === 'baseDelayMs' || k === 'maxDelayMs' ? 0 : 1)) throw new RepoError('config', `S3 backend option ${k} must be a positive integer, not ${String(v)}`);
  }
  const endpoint = process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || undefined;
  const agentOpts = { keepAlive: true, maxSockets: o.concurrency };
  const config: S3ClientConfig = {
    forcePathStyle: endpoint !== undefined,
    // With the SDK's default (a CRC on every body) streamed bodies get 411
    // MissingContentLength from radosgw 16; stores that need a checksum still get one.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 1, // retries are ours (call()), with a stated count
    // An endpoint that takes the connection and never answers fails: each
    // request has a deadline for its response to begin (see http()). Not the
    // socket's inactivity timeout: Node resets it per write() and read, so a
    // chunk sent as one write on a slow link, or a body our reader pauses,
    // was cut though nothing was wrong. The SDK's requestTimeout only warns
    // unless throwOnRequestTimeout is set (@smithy/node-http-handler 4).
    requestHandler: { httpAgent: new HttpAgent(agentOpts), httpsAgent: new HttpsAgent(agentOpts), connectionTimeout: 10000, throwOnRequestTimeout: true },
  };
  let client = quietClient(config);
  try {
    await client.config.region();
  } catch {
    client.destroy();
    if (endpoint === undefined) {
      throw new RepoError('config', `no AWS region for s3://${bucket}/${pfx}: set AWS_REGION or a region in ~/.aws/config (or AWS_ENDPOINT_URL for a self-hosted store)`);
    }
    client = quietClient({ ...config, region: 'us-east-1' });
  }
  return new S3Backend(client, bucket, pfx, o);
}
