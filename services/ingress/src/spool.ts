// Where a message waits while milters look at it: each milter of a chain
// reads it from the start, and the queue gets it only after the last one
// answered, so it must be read more than once. Up to `memoryMax` octets stay
// in memory (small messages, the common case); past that the whole message
// goes to a file in `dir`, unlinked as soon as it is opened, so nothing is
// left behind by a crash and memory stays bounded whatever the size.
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

/** Read size: the milter protocol's chunk (65535) fits in one. */
const READ_CHUNK = 64 * 1024;

export class Spool {
  private parts: Buffer[] = [];
  private file: fs.FileHandle | undefined;
  private opening: Promise<fs.FileHandle> | undefined;
  size = 0;

  constructor(
    private readonly dir: string,
    private readonly memoryMax: number,
  ) {}

  async write(buf: Buffer): Promise<void> {
    if (!buf.length) return;
    if (!this.file && this.size + buf.length <= this.memoryMax) {
      this.parts.push(buf);
      this.size += buf.length;
      return;
    }
    const fh = await this.open();
    if (this.parts.length) {
      const held = Buffer.concat(this.parts);
      this.parts = [];
      await writeAll(fh, held, 0);
    }
    await writeAll(fh, buf, this.size);
    this.size += buf.length;
  }

  private open(): Promise<fs.FileHandle> {
    this.opening ??= (async () => {
      const name = path.join(this.dir, `tern-ingress-${crypto.randomBytes(8).toString('hex')}`);
      const fh = await fs.open(name, 'wx+', 0o600);
      // Only the handle keeps it: a crash leaves no file behind.
      await fs.unlink(name);
      this.file = fh;
      return fh;
    })();
    return this.opening;
  }

  /** The first `n` octets (fewer if the message is shorter). */
  async head(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of this.read(0, Math.min(n, this.size))) parts.push(c);
    return Buffer.concat(parts);
  }

  /** Octets `from` to `to` in chunks of at most 64 KiB. */
  async *read(from = 0, to = this.size): AsyncGenerator<Buffer> {
    if (!this.file) {
      let pos = 0;
      for (const p of this.parts) {
        const start = Math.max(from - pos, 0);
        const end = Math.min(to - pos, p.length);
        for (let i = start; i < end; i += READ_CHUNK) yield p.subarray(i, Math.min(i + READ_CHUNK, end));
        pos += p.length;
        if (pos >= to) return;
      }
      return;
    }
    for (let pos = from; pos < to; ) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, to - pos));
      const { bytesRead } = await this.file.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) throw new Error(`spool file ended at ${pos} of ${to} octets`);
      yield buf.subarray(0, bytesRead);
      pos += bytesRead;
    }
  }

  /** Frees the memory and closes the file (already unlinked). */
  async close(): Promise<void> {
    this.parts = [];
    const fh = this.file ?? (await this.opening?.catch(() => undefined));
    this.file = undefined;
    await fh?.close().catch(() => undefined);
  }

  /** Whether it went to disk (tests, logs). */
  get onDisk(): boolean {
    return this.file !== undefined;
  }
}

async function writeAll(fh: fs.FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let off = 0; off < buf.length; ) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}
