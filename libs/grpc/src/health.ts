// grpc.health.v1.Health (Check, Watch, List) with its three messages encoded
// by hand, as grpc-health-check 2.x answers them. That package reads its
// .proto with @grpc/proto-loader and protobufjs when it is imported, 1.9 MB
// of heap in every process (with reflection's share, which loads the same
// two at its first call now); the messages are a string, an enum and a map.
import * as grpc from '@grpc/grpc-js';
import { BinaryReader, BinaryWriter, WireType } from '@tern/proto';

export type HealthStatus = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';
const STATUS: readonly HealthStatus[] = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];

/** grpc-health-check lists at most this many services, else RESOURCE_EXHAUSTED. */
const LIST_LIMIT = 100;

interface CheckRequest {
  service: string;
}
interface CheckResponse {
  status: HealthStatus;
}
interface ListResponse {
  statuses: Record<string, CheckResponse>;
}

// HealthCheckRequest { string service = 1; }
function encodeRequest(req: CheckRequest): Buffer {
  const w = new BinaryWriter();
  if (req.service) w.tag(1, WireType.LengthDelimited).string(req.service);
  return Buffer.from(w.finish());
}
function decodeRequest(buf: Buffer): CheckRequest {
  const r = new BinaryReader(buf);
  let service = '';
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.LengthDelimited) service = r.string();
    else r.skip(wire, field);
  }
  return { service };
}

// HealthCheckResponse { ServingStatus status = 1; }
function encodeResponse(res: CheckResponse): Buffer {
  const w = new BinaryWriter();
  const n = STATUS.indexOf(res.status);
  if (n > 0) w.tag(1, WireType.Varint).int32(n);
  return Buffer.from(w.finish());
}
function decodeResponse(buf: Uint8Array): CheckResponse {
  const r = new BinaryReader(buf);
  let status: HealthStatus = 'UNKNOWN';
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.Varint) status = STATUS[r.int32()] ?? 'UNKNOWN';
    else r.skip(wire, field);
  }
  return { status };
}

// HealthListRequest {} and HealthListResponse { map<string, HealthCheckResponse> statuses = 1; }
// (a map is a repeated entry message { key = 1; value = 2; }).
function encodeList(res: ListResponse): Buffer {
  const w = new BinaryWriter();
  for (const [key, value] of Object.entries(res.statuses)) {
    w.tag(1, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string(key);
    w.tag(2, WireType.LengthDelimited).bytes(encodeResponse(value));
    w.join();
  }
  return Buffer.from(w.finish());
}
function decodeList(buf: Buffer): ListResponse {
  const statuses: Record<string, CheckResponse> = {};
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field !== 1 || wire !== WireType.LengthDelimited) {
      r.skip(wire, field);
      continue;
    }
    const entry = new BinaryReader(r.bytes());
    let key = '';
    let value: CheckResponse = { status: 'UNKNOWN' };
    while (entry.pos < entry.len) {
      const [f, w] = entry.tag();
      if (f === 1 && w === WireType.LengthDelimited) key = entry.string();
      else if (f === 2 && w === WireType.LengthDelimited) value = decodeResponse(entry.bytes());
      else entry.skip(w, f);
    }
    statuses[key] = value;
  }
  return { statuses };
}

const method = <Req, Res>(name: string, responseStream: boolean, req: [(v: Req) => Buffer, (b: Buffer) => Req], res: [(v: Res) => Buffer, (b: Buffer) => Res]) => ({
  path: `/grpc.health.v1.Health/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: req[0],
  requestDeserialize: req[1],
  responseSerialize: res[0],
  responseDeserialize: res[1],
  originalName: name.toLowerCase(),
});

/** The service definition (server and client side). */
export const healthDefinition = {
  Check: method<CheckRequest, CheckResponse>('Check', false, [encodeRequest, decodeRequest], [encodeResponse, decodeResponse]),
  Watch: method<CheckRequest, CheckResponse>('Watch', true, [encodeRequest, decodeRequest], [encodeResponse, decodeResponse]),
  List: method<Record<string, never>, ListResponse>('List', false, [() => Buffer.alloc(0), () => ({})], [encodeList, decodeList]),
} satisfies grpc.ServiceDefinition;

/** What grpc-health-check's HealthImplementation did: statuses by service name, Watch streams told of every setStatus. */
export class Health {
  private readonly statuses = new Map<string, HealthStatus>();
  private readonly watchers = new Map<string, Set<(status: HealthStatus) => void>>();

  constructor(initial: Record<string, HealthStatus>) {
    for (const [name, status] of Object.entries(initial)) this.statuses.set(name, status);
  }

  setStatus(service: string, status: HealthStatus): void {
    this.statuses.set(service, status);
    for (const watcher of this.watchers.get(service) ?? []) watcher(status);
  }

  /** The handlers, each run after `before` (GrpcServer evaluates readiness there). */
  handlers(before: () => void): grpc.UntypedServiceImplementation {
    return {
      Check: (call: grpc.ServerUnaryCall<CheckRequest, CheckResponse>, callback: grpc.sendUnaryData<CheckResponse>) => {
        before();
        const status = this.statuses.get(call.request.service);
        if (status) callback(null, { status });
        else callback({ code: grpc.status.NOT_FOUND, details: `Health status unknown for service ${call.request.service}` });
      },
      Watch: (call: grpc.ServerWritableStream<CheckRequest, CheckResponse>) => {
        before();
        const service = call.request.service;
        const watcher = (status: HealthStatus) => call.write({ status });
        let set = this.watchers.get(service);
        if (!set) this.watchers.set(service, (set = new Set()));
        set.add(watcher);
        call.on('cancelled', () => {
          set.delete(watcher);
          if (set.size === 0 && this.watchers.get(service) === set) this.watchers.delete(service);
        });
        call.write({ status: this.statuses.get(service) ?? 'SERVICE_UNKNOWN' });
      },
      List: (_call: grpc.ServerUnaryCall<Record<string, never>, ListResponse>, callback: grpc.sendUnaryData<ListResponse>) => {
        before();
        if (this.statuses.size > LIST_LIMIT) {
          callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'Too many services to list.' });
          return;
        }
        callback(null, { statuses: Object.fromEntries([...this.statuses].map(([name, status]) => [name, { status }])) });
      },
    };
  }
}
