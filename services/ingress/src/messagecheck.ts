// End-of-data checks (policy CheckMessage: DKIM, SPF, DMARC, ARC, size per
// domain): the body as the client sent it is teed to a client stream while it
// also goes to the queue. Both streams' backpressure is respected, so memory
// stays bounded (I4). The verdict is awaited, with a deadline, before the
// queue's commit marker is sent: a refusal stores nothing.
import { once } from 'node:events';
import { grpc } from '@tern/grpc';
import { CheckMessageRequest, type CheckMessageHeader, type CheckMessageResponse, type Header } from '@tern/proto';
import type { PolicyClient } from './clients';

const CHUNK = 64 * 1024;

/** Which listeners' messages are checked, and how long to wait for the verdict after the end of data. */
export interface MessageCheckSettings {
  listeners: ReadonlySet<string>;
  timeoutMs: number;
}

export class MessageCheck {
  private readonly call: grpc.ClientWritableStream<CheckMessageRequest>;
  private readonly verdict: Promise<CheckMessageResponse>;
  private failed = false;
  private done = false;

  constructor(policy: PolicyClient, header: CheckMessageHeader) {
    let call!: grpc.ClientWritableStream<CheckMessageRequest>;
    this.verdict = new Promise<CheckMessageResponse>((resolve, reject) => {
      // No deadline on the stream: the client's pace is bounded by the SMTP
      // data timeout, the verdict by MessageCheckSettings.timeoutMs.
      call = policy.checkMessage(new grpc.Metadata(), { deadline: Infinity }, (err, res) => {
        this.done = true;
        if (err) {
          this.failed = true;
          reject(err);
        } else resolve(res);
      });
    });
    this.verdict.catch(() => undefined);
    this.call = call;
    this.call.on('error', () => undefined);
    this.call.write(CheckMessageRequest.fromPartial({ header }));
  }

  /**
   * Sends body bytes; resolves when the stream takes more. Never throws: after
   * a failure it returns at once and the failure comes out of `result`.
   */
  async write(buf: Buffer): Promise<void> {
    for (let i = 0; i < buf.length && !this.failed && !this.done; i += CHUNK) {
      if (!this.call.write(CheckMessageRequest.fromPartial({ chunk: buf.subarray(i, i + CHUNK) }))) {
        await Promise.race([once(this.call, 'drain'), this.verdict]).catch(() => undefined);
      }
    }
  }

  /** Ends the body and waits for the verdict; a policy error or no verdict within `timeoutMs` throws. */
  async result(timeoutMs: number): Promise<CheckMessageResponse> {
    if (!this.done) this.call.end();
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.verdict,
        new Promise<never>((_r, reject) => {
          timer = setTimeout(() => reject(new Error(`no CheckMessage verdict within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Abandons the check (data refused, queue failed, verdict late). */
  cancel(): void {
    if (!this.done) this.call.cancel();
  }
}

const FIELD_NAME = /^[!-9;-~]+$/;

/**
 * Header lines to put at the top of the stored message (RFC 8601: a new
 * Authentication-Results goes above the existing ones). Folded values keep
 * their folds, with CRLF line ends; a name that is not a header field name,
 * or a value with control characters, is dropped.
 */
export function headerLines(headers: Header[]): Buffer {
  let out = '';
  for (const h of headers) {
    if (!FIELD_NAME.test(h.name)) continue;
    const value = h.value.replace(/\r?\n(?=[ \t])/g, '\r\n').replace(/\s+$/, '');
    if (/[\0\r\n]/.test(value.replace(/\r\n(?=[ \t])/g, ''))) continue;
    out += `${h.name}: ${value}\r\n`;
  }
  return Buffer.from(out, 'utf8');
}
