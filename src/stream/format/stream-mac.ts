/**
 * A keyed GMAC over a stream's bytes, for receive's second pass.
 *
 * A receive verifies the whole input (SHA-256 against the end record) before
 * it writes anything, then reads the same bytes again to apply them. The
 * second read must prove it sees the bytes the first one verified, and a
 * second SHA-256 costs as much as the first (~1 s per GiB here). A GMAC
 * (AES-256-GCM over additional data only: GHASH with carry-less multiply)
 * under a key and nonce drawn for this receive and never shown to anyone is a
 * MAC at ~0.1 s per GiB: bytes changed between the passes give another tag
 * except with probability about (stream bytes / 16) / 2^128. Format versions
 * 1 and 2 only: the BLAKE3 digest is cheaper to compute again than
 * this (verifier.ts).
 */
import { createCipheriv, randomBytes, type CipherGCM } from 'node:crypto';

/** A MAC key: drawn once per receive, used for its two passes over one stream. */
export interface StreamMacKey {
  readonly key: Buffer;
  readonly nonce: Buffer;
}

/** A fresh random key. */
export function newStreamMacKey(): StreamMacKey {
  return { key: randomBytes(32), nonce: randomBytes(12) };
}

/** The GMAC of bytes added in order, in pieces of any length. */
export class StreamMac {
  private readonly g: CipherGCM;

  constructor(k: StreamMacKey) {
    this.g = createCipheriv('aes-256-gcm', k.key, k.nonce);
  }
  update(data: Uint8Array): void {
    // Additional data may come in pieces of any length (OpenSSL carries a partial block).
    if (data.length) this.g.setAAD(data);
  }
  /** The 16-byte tag; the MAC cannot be used after. */
  tag(): Buffer {
    this.g.final();
    return this.g.getAuthTag();
  }
}
