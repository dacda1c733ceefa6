// Bodies of just-committed messages whose first jobs got no slot: they wait
// queued for the scheduler, which would otherwise read each body back from
// Postgres as hex text (node-pg has no safe binary results) to put it in the
// job. For big bodies that read-back cost the queue more CPU than the rest
// of the message's handling, which held the slots longer, which queued more
// messages: once the slots ran short (a concurrency limit still growing) the
// queue did not recover (docs/performance.md). Kept here, bounded by bytes
// (oldest dropped first), each body leaves once a job of its message is
// dispatched. A body another replica dispatches, or one dropped, is read
// back as before.
export class BodyCache {
  private readonly bodies = new Map<string, Buffer>();
  private held = 0;

  constructor(private readonly maxBytes: number) {}

  /** Keeps a copy of `body` (it may be a view into a whole gRPC request). */
  put(id: string, body: Buffer): void {
    if (body.length > this.maxBytes) return;
    this.delete(id);
    this.bodies.set(id, Buffer.from(body));
    this.held += body.length;
    for (const [oldest, b] of this.bodies) {
      if (this.held <= this.maxBytes) break;
      this.bodies.delete(oldest);
      this.held -= b.length;
    }
  }

  has(id: string): boolean {
    return this.bodies.has(id);
  }

  get(id: string): Buffer | undefined {
    return this.bodies.get(id);
  }

  delete(id: string): void {
    const b = this.bodies.get(id);
    if (b) {
      this.bodies.delete(id);
      this.held -= b.length;
    }
  }

  get bytes(): number {
    return this.held;
  }

  get size(): number {
    return this.bodies.size;
  }
}
