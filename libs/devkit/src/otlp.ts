// An OTLP/HTTP trace receiver for tests: `POST /v1/traces` with
// application/json (what @opentelemetry/exporter-trace-otlp-http sends) or
// application/x-protobuf, optionally gzip-compressed. Spans are kept in memory.
//
//   const otlp = await new OtlpReceiver().start();
//   env.OTEL_EXPORTER_OTLP_ENDPOINT = otlp.endpoint;
//   const span = await otlp.waitForSpan((s) => s.name === 'smtp.session');
//   otlp.spansFor(span.traceId);
import http from 'node:http';
import zlib from 'node:zlib';

export type AttributeValue = string | number | boolean | null | AttributeValue[] | { [key: string]: AttributeValue };

export interface CollectedSpan {
  /** Lower-case hex (32 chars). */
  traceId: string;
  /** Lower-case hex (16 chars). */
  spanId: string;
  /** Hex, or undefined for a root span. */
  parentSpanId?: string;
  name: string;
  /** OTLP SpanKind number: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  /** Resource attribute service.name. */
  serviceName: string;
  attributes: Record<string, AttributeValue>;
  resource: Record<string, AttributeValue>;
  scope: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  /** 0 unset, 1 ok, 2 error. */
  status: { code: number; message?: string };
  events: { name: string; timeUnixNano: string; attributes: Record<string, AttributeValue> }[];
  links: { traceId: string; spanId: string }[];
}

export interface OtlpReceiverOptions {
  host?: string;
  port?: number;
}

// ------------------------------------------------------------------ JSON

type Json = Record<string, unknown>;

function idHex(v: unknown): string {
  if (typeof v !== 'string' || v === '') return '';
  if (/^[0-9a-fA-F]+$/.test(v) && (v.length === 32 || v.length === 16)) return v.toLowerCase();
  return Buffer.from(v, 'base64').toString('hex');
}

function jsonValue(v: unknown): AttributeValue {
  const o = (v ?? {}) as Json;
  if ('stringValue' in o) return String(o.stringValue);
  if ('boolValue' in o) return Boolean(o.boolValue);
  if ('intValue' in o) return Number(o.intValue);
  if ('doubleValue' in o) return Number(o.doubleValue);
  if ('bytesValue' in o) return String(o.bytesValue);
  if ('arrayValue' in o) return (((o.arrayValue as Json)?.values as unknown[]) ?? []).map(jsonValue);
  if ('kvlistValue' in o) return jsonAttrs((o.kvlistValue as Json)?.values);
  return null;
}

function jsonAttrs(list: unknown): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const kv of (list as Json[] | undefined) ?? []) out[String(kv.key)] = jsonValue(kv.value);
  return out;
}

function fromJson(body: Json): CollectedSpan[] {
  const out: CollectedSpan[] = [];
  for (const rs of (body.resourceSpans as Json[] | undefined) ?? []) {
    const resource = jsonAttrs((rs.resource as Json | undefined)?.attributes);
    for (const ss of (rs.scopeSpans as Json[] | undefined) ?? []) {
      const scope = String(((ss.scope as Json | undefined)?.name as string | undefined) ?? '');
      for (const s of (ss.spans as Json[] | undefined) ?? []) {
        const status = (s.status as Json | undefined) ?? {};
        const parent = idHex(s.parentSpanId);
        out.push({
          traceId: idHex(s.traceId),
          spanId: idHex(s.spanId),
          parentSpanId: parent || undefined,
          name: String(s.name ?? ''),
          kind: Number(s.kind ?? 0),
          serviceName: String(resource['service.name'] ?? ''),
          attributes: jsonAttrs(s.attributes),
          resource,
          scope,
          startTimeUnixNano: String(s.startTimeUnixNano ?? '0'),
          endTimeUnixNano: String(s.endTimeUnixNano ?? '0'),
          status: { code: Number(status.code ?? 0), message: (status.message as string | undefined) || undefined },
          events: ((s.events as Json[] | undefined) ?? []).map((e) => ({
            name: String(e.name ?? ''),
            timeUnixNano: String(e.timeUnixNano ?? '0'),
            attributes: jsonAttrs(e.attributes),
          })),
          links: ((s.links as Json[] | undefined) ?? []).map((l) => ({ traceId: idHex(l.traceId), spanId: idHex(l.spanId) })),
        });
      }
    }
  }
  return out;
}

// -------------------------------------------------------------- protobuf

/** Minimal protobuf wire reader: enough for ExportTraceServiceRequest. */
class Pb {
  pos = 0;
  constructor(readonly buf: Buffer) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const b = this.buf[this.pos++];
      if (b === undefined) throw new Error('truncated varint');
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
    }
  }
  /** Fields as [number, wire type, value]; length-delimited values as Buffers. */
  *fields(): Generator<[number, number, bigint | Buffer]> {
    while (!this.done) {
      const key = Number(this.varint());
      const field = key >>> 3;
      const wire = key & 7;
      if (wire === 0) yield [field, wire, this.varint()];
      else if (wire === 1) {
        yield [field, wire, this.buf.readBigUInt64LE(this.pos)];
        this.pos += 8;
      } else if (wire === 2) {
        const n = Number(this.varint());
        yield [field, wire, this.buf.subarray(this.pos, this.pos + n)];
        this.pos += n;
      } else if (wire === 5) {
        yield [field, wire, BigInt(this.buf.readUInt32LE(this.pos))];
        this.pos += 4;
      } else throw new Error(`unsupported wire type ${wire}`);
    }
  }
}

function pbMessages(buf: Buffer): [number, number, bigint | Buffer][] {
  return [...new Pb(buf).fields()];
}

function pbValue(buf: Buffer): AttributeValue {
  for (const [f, , v] of pbMessages(buf)) {
    if (f === 1) return (v as Buffer).toString('utf8');
    if (f === 2) return (v as bigint) !== 0n;
    if (f === 3) return Number(BigInt.asIntN(64, v as bigint));
    if (f === 4) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(v as bigint);
      return b.readDoubleLE(0);
    }
    if (f === 5) return pbMessages(v as Buffer).filter(([ff]) => ff === 1).map(([, , vv]) => pbValue(vv as Buffer));
    if (f === 6) return pbAttrs(pbMessages(v as Buffer).filter(([ff]) => ff === 1).map(([, , vv]) => vv as Buffer));
    if (f === 7) return (v as Buffer).toString('base64');
  }
  return null;
}

function pbAttrs(kvs: Buffer[]): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const kv of kvs) {
    let key = '';
    let value: AttributeValue = null;
    for (const [f, , v] of pbMessages(kv)) {
      if (f === 1) key = (v as Buffer).toString('utf8');
      if (f === 2) value = pbValue(v as Buffer);
    }
    out[key] = value;
  }
  return out;
}

function fromProtobuf(buf: Buffer): CollectedSpan[] {
  const out: CollectedSpan[] = [];
  for (const [f1, , rsBuf] of pbMessages(buf)) {
    if (f1 !== 1) continue;
    let resource: Record<string, AttributeValue> = {};
    const scopeSpans: Buffer[] = [];
    for (const [f, , v] of pbMessages(rsBuf as Buffer)) {
      if (f === 1) resource = pbAttrs(pbMessages(v as Buffer).filter(([ff]) => ff === 1).map(([, , vv]) => vv as Buffer));
      if (f === 2) scopeSpans.push(v as Buffer);
    }
    for (const ss of scopeSpans) {
      let scope = '';
      for (const [f, , v] of pbMessages(ss)) {
        if (f === 1) for (const [sf, , sv] of pbMessages(v as Buffer)) if (sf === 1) scope = (sv as Buffer).toString('utf8');
        if (f !== 2) continue;
        const span: CollectedSpan = {
          traceId: '', spanId: '', name: '', kind: 0, serviceName: String(resource['service.name'] ?? ''),
          attributes: {}, resource, scope, startTimeUnixNano: '0', endTimeUnixNano: '0', status: { code: 0 }, events: [], links: [],
        };
        const attrs: Buffer[] = [];
        for (const [sf, , sv] of pbMessages(v as Buffer)) {
          switch (sf) {
            case 1: span.traceId = (sv as Buffer).toString('hex'); break;
            case 2: span.spanId = (sv as Buffer).toString('hex'); break;
            case 4: if ((sv as Buffer).length) span.parentSpanId = (sv as Buffer).toString('hex'); break;
            case 5: span.name = (sv as Buffer).toString('utf8'); break;
            case 6: span.kind = Number(sv); break;
            case 7: span.startTimeUnixNano = String(sv); break;
            case 8: span.endTimeUnixNano = String(sv); break;
            case 9: attrs.push(sv as Buffer); break;
            case 11: {
              const ev = { name: '', timeUnixNano: '0', attributes: {} as Record<string, AttributeValue> };
              const evAttrs: Buffer[] = [];
              for (const [ef, , evv] of pbMessages(sv as Buffer)) {
                if (ef === 1) ev.timeUnixNano = String(evv);
                if (ef === 2) ev.name = (evv as Buffer).toString('utf8');
                if (ef === 3) evAttrs.push(evv as Buffer);
              }
              ev.attributes = pbAttrs(evAttrs);
              span.events.push(ev);
              break;
            }
            case 13: {
              const link = { traceId: '', spanId: '' };
              for (const [lf, , lv] of pbMessages(sv as Buffer)) {
                if (lf === 1) link.traceId = (lv as Buffer).toString('hex');
                if (lf === 2) link.spanId = (lv as Buffer).toString('hex');
              }
              span.links.push(link);
              break;
            }
            case 15:
              for (const [tf, , tv] of pbMessages(sv as Buffer)) {
                if (tf === 2) span.status.message = (tv as Buffer).toString('utf8');
                if (tf === 3) span.status.code = Number(tv);
              }
              break;
          }
        }
        span.attributes = pbAttrs(attrs);
        out.push(span);
      }
    }
  }
  return out;
}

// -------------------------------------------------------------- receiver

export class OtlpReceiver {
  private server?: http.Server;
  private boundPort = 0;
  private listeners = new Set<() => void>();
  /** Every span received, in order of arrival. */
  readonly spans: CollectedSpan[] = [];
  /** Export requests received (including failed ones). */
  requests = 0;

  constructor(private readonly opts: OtlpReceiverOptions = {}) {}

  get host(): string {
    return this.opts.host ?? '127.0.0.1';
  }
  get port(): number {
    return this.boundPort;
  }
  /** Base URL for OTEL_EXPORTER_OTLP_ENDPOINT (exporters append /v1/traces). */
  get endpoint(): string {
    return `http://${this.host}:${this.boundPort}`;
  }
  /** The traces URL itself (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). */
  get tracesUrl(): string {
    return `${this.endpoint}/v1/traces`;
  }

  /** Spans of one trace, in order of arrival. */
  spansFor(traceId: string): CollectedSpan[] {
    const id = traceId.toLowerCase();
    return this.spans.filter((s) => s.traceId === id);
  }

  /** Trace ids seen, in order of first appearance. */
  traceIds(): string[] {
    return [...new Set(this.spans.map((s) => s.traceId))];
  }

  clear(): void {
    this.spans.length = 0;
  }

  /**
   * Resolves with the predicate's first truthy result over all spans
   * received so far (checked now and after each export), or rejects after `timeoutMs`.
   */
  async waitFor<T>(predicate: (spans: readonly CollectedSpan[]) => T | undefined | null | false, timeoutMs = 10_000): Promise<T> {
    const now = predicate(this.spans);
    if (now) return now;
    return new Promise<T>((resolve, reject) => {
      const check = () => {
        let r: T | undefined | null | false;
        try {
          r = predicate(this.spans);
        } catch (err) {
          done();
          reject(err as Error);
          return;
        }
        if (r) {
          done();
          resolve(r);
        }
      };
      const timer = setTimeout(() => {
        done();
        const names = [...new Set(this.spans.map((s) => `${s.serviceName}:${s.name}`))].join(', ');
        reject(new Error(`OtlpReceiver: condition not met after ${timeoutMs} ms (${this.spans.length} spans: ${names})`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
    });
  }

  /** The first span matching, waiting for it if needed. */
  waitForSpan(match: (span: CollectedSpan) => boolean, timeoutMs = 10_000): Promise<CollectedSpan> {
    return this.waitFor((spans) => spans.find(match), timeoutMs);
  }

  async start(): Promise<this> {
    const server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.boundPort = (server.address() as import('node:net').AddressInfo).port;
    return this;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const url = (req.url ?? '').split('?')[0];
    if (req.method !== 'POST' || url !== '/v1/traces') {
      // Metrics and logs exports are accepted and dropped.
      const known = req.method === 'POST' && (url === '/v1/metrics' || url === '/v1/logs');
      res.writeHead(known ? 200 : 404, { 'content-type': 'application/json' }).end(known ? '{}' : '{"error":"not found"}');
      return;
    }
    this.requests++;
    const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    try {
      let body = Buffer.concat(chunks);
      if (String(req.headers['content-encoding'] ?? '').toLowerCase() === 'gzip') body = zlib.gunzipSync(body);
      let spans: CollectedSpan[];
      if (type === 'application/x-protobuf') spans = fromProtobuf(body);
      else if (type === 'application/json' || type === '') spans = fromJson(JSON.parse(body.toString('utf8')) as Json);
      else {
        res.writeHead(415, { 'content-type': 'application/json' }).end(`{"error":"unsupported content-type ${type}"}`);
        return;
      }
      this.spans.push(...spans);
      if (type === 'application/x-protobuf') res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      for (const l of [...this.listeners]) l();
    } catch (err) {
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (err as Error).message }));
    }
  }
}
