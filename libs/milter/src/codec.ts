// The wire form: each packet is a 4-octet big-endian length (of what
// follows), one command or reply octet, then its data. Strings are
// NUL-terminated octets, read and written as latin1 so that 8-bit header
// text passes through unchanged.

/** A packet longer than this is a protocol error (REPLBODY chunks are 64 KiB; 1 MiB leaves room for MDS_1M milters). */
export const MAX_PACKET = 1024 * 1024 + 16;

export interface Packet {
  code: string;
  data: Buffer;
}

export class MilterError extends Error {
  constructor(
    /** connect: no connection; timeout: no answer in time; closed: the milter hung up; protocol: an answer that breaks the protocol. */
    readonly kind: 'connect' | 'timeout' | 'closed' | 'protocol',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'MilterError';
  }
}

export const protocolError = (message: string) => new MilterError('protocol', message);

/** One packet: `code` and its data parts (Buffers as they are, strings NUL-terminated, numbers as 32-bit big-endian). */
export function encode(code: string, ...parts: Array<Buffer | string | number>): Buffer {
  const bufs: Buffer[] = [];
  for (const p of parts) {
    if (typeof p === 'number') {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(p >>> 0);
      bufs.push(b);
    } else if (typeof p === 'string') bufs.push(Buffer.from(`${p}\0`, 'latin1'));
    else bufs.push(p);
  }
  const data = Buffer.concat(bufs);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(data.length + 1);
  head.write(code, 4, 'latin1');
  return Buffer.concat([head, data]);
}

/** Splits a byte stream into packets; bounded: a length over MAX_PACKET or of zero throws. */
export class PacketDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Packet[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Packet[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len === 0 || len > MAX_PACKET) throw protocolError(`packet length ${len} (1 to ${MAX_PACKET})`);
      if (this.buf.length < 4 + len) break;
      out.push({ code: String.fromCharCode(this.buf[4]!), data: this.buf.subarray(5, 4 + len) });
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }

  /** Octets held for an incomplete packet. */
  get pending(): number {
    return this.buf.length;
  }
}

/** The NUL-terminated strings of `data` (a missing final NUL is tolerated). */
export function cstrings(data: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0) {
      out.push(data.toString('latin1', start, i));
      start = i + 1;
    }
  }
  if (start < data.length) out.push(data.toString('latin1', start));
  return out;
}

/** A 32-bit index followed by strings (INSHEADER, CHGHEADER). */
export function indexed(data: Buffer): { index: number; strings: string[] } {
  if (data.length < 4) throw protocolError('packet too short for its index');
  return { index: data.readUInt32BE(0), strings: cstrings(data.subarray(4)) };
}
