// A TCP proxy in front of a real S3 endpoint that can lose an answer: the
// request reaches the server and is carried out, but the connection breaks
// before the client reads the reply. The client then cannot tell a write that
// landed from one that did not: the case a retry has to sort out. It can also
// answer one request itself (a reply some other store would give).
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

interface Rule {
  re: RegExp;
  /** 'lose': forward, drop the answer; 'refuse': never forward; a string: answer with it, never forward. */
  action: 'lose' | 'refuse' | string;
  before?: () => Promise<void>;
}

export interface LossyProxy {
  /** http://127.0.0.1:PORT */
  url: string;
  /**
   * The next request whose first bytes match `re` is carried out by the
   * server; its answer is thrown away and both connections are closed.
   * `before` runs (and is awaited) before the request goes on; with
   * `refuse` the request is not forwarded at all, the connection just breaks.
   */
  loseNext(re: RegExp, opts?: { refuse?: boolean; before?: () => Promise<void> }): void;
  /** The next request matching `re` gets `status` with an S3 error body naming `code`, from the proxy. */
  answerNext(re: RegExp, status: number, code: string): void;
  /** Rules applied so far. */
  readonly applied: number;
  close(): Promise<void>;
}

export async function lossyProxy(target: string): Promise<LossyProxy> {
  const t = new URL(target);
  const port = Number(t.port || 80);
  // Rules apply in order, each once.
  const rules: Rule[] = [];
  let applied = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(port, t.hostname);
    sockets.add(client).add(upstream);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
    let dropNext = false;
    let queue = Promise.resolve();
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', kill);
    upstream.on('error', kill);
    client.on('data', (d: Buffer) => {
      const r = rules[0];
      if (r && r.re.test(d.subarray(0, 512).toString('latin1'))) {
        rules.shift();
        applied++;
        client.pause();
        queue = queue
          .then(r.before)
          .then(() => {
            if (r.action === 'refuse') return kill();
            if (r.action !== 'lose') {
              upstream.destroy();
              client.end(r.action);
              return;
            }
            dropNext = true;
            upstream.write(d);
            client.resume();
          }, kill);
        return;
      }
      void queue.then(() => upstream.write(d));
    });
    upstream.on('data', (d: Buffer) => {
      // An interim "100 Continue" is not the answer.
      if (dropNext && !d.subarray(0, 12).toString('latin1').startsWith('HTTP/1.1 100')) return kill();
      client.write(d);
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    loseNext(re, opts = {}) {
      rules.push({ re, action: opts.refuse ? 'refuse' : 'lose', before: opts.before });
    },
    answerNext(re, status, code) {
      const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code} (from the test proxy)</Message></Error>`;
      rules.push({
        re,
        action: `HTTP/1.1 ${status} ${code}\r\nContent-Type: application/xml\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      });
    },
    get applied() {
      return applied;
    },
    close: () =>
      new Promise<void>((res) => {
        for (const s of sockets) s.destroy();
        server.close(() => res());
      }),
  };
}

/**
 * Runs `fn` with AWS_ENDPOINT_URL_S3 pointing at a lossy proxy in front of
 * `endpoint` (an S3 backend reads it when it first sends, so backends made
 * inside `fn` go through the proxy), then restores the variable and closes
 * the proxy, whatever `fn` did.
 */
export async function throughLossyProxy<T>(endpoint: string, fn: (proxy: LossyProxy) => Promise<T>): Promise<T> {
  const proxy = await lossyProxy(endpoint);
  const saved = process.env.AWS_ENDPOINT_URL_S3;
  process.env.AWS_ENDPOINT_URL_S3 = proxy.url;
  try {
    return await fn(proxy);
  } finally {
    if (saved === undefined) delete process.env.AWS_ENDPOINT_URL_S3;
    else process.env.AWS_ENDPOINT_URL_S3 = saved;
    await proxy.close();
  }
}
