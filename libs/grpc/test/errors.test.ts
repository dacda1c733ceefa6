// Named errors and their gRPC status (libs/grpc/src/errors.ts), through a
// real gRPC server and client on loopback: the class decides the status a
// caller sees, the message is the details, anything else takes the
// handler's fallback.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  grpc,
  InvalidFieldError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
  isGrpcError,
  statusError,
  toServiceError,
  type StatusError,
} from '../src/index';

const DEFINITION: grpc.ServiceDefinition = {
  fail: {
    path: '/test.Errors/Fail',
    requestStream: false,
    responseStream: false,
    requestSerialize: (v: Buffer) => v,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (v: Buffer) => v,
    responseDeserialize: (b: Buffer) => b,
  },
};

/** What the handler throws for each request body. */
const THROWN: Record<string, () => unknown> = {
  field: () => new InvalidFieldError('operator', 'required'),
  missing: () => new NotFoundError('no message with queue id "X"'),
  big: () => new ResourceExhaustedError('message exceeds the maximum size of 10 bytes'),
  plain: () => new Error('connection terminated'),
  string: () => 'a string',
  status: () => statusError(grpc.status.ABORTED, 'aborted by a test'),
};

class FailedError extends UnavailableError {
  override readonly name = 'FailedError';
}

describe('named errors to gRPC status', () => {
  const server = new grpc.Server();
  let client: grpc.Client & { fail: (req: Buffer, cb: (err: grpc.ServiceError | null) => void) => void };

  before(async () => {
    server.addService(DEFINITION, {
      fail: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) =>
        cb(toServiceError(THROWN[call.request.toString()]!(), (message, cause) => new FailedError(`Fail failed: ${message}`, { cause }))),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    const Ctor = grpc.makeGenericClientConstructor(DEFINITION, 'test.Errors');
    client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as typeof client;
  });
  after(() => {
    client.close();
    server.forceShutdown();
  });

  const call = (what: string) => new Promise<grpc.ServiceError>((resolve) => client.fail(Buffer.from(what), (err) => resolve(err!)));

  for (const [what, code, details] of [
    ['field', grpc.status.INVALID_ARGUMENT, 'operator: required'],
    ['missing', grpc.status.NOT_FOUND, 'no message with queue id "X"'],
    ['big', grpc.status.RESOURCE_EXHAUSTED, 'message exceeds the maximum size of 10 bytes'],
    ['plain', grpc.status.UNAVAILABLE, 'Fail failed: connection terminated'],
    ['string', grpc.status.UNAVAILABLE, 'Fail failed: a string'],
    ['status', grpc.status.ABORTED, 'aborted by a test'],
  ] as const) {
    it(`${what}: ${grpc.status[code]} "${details}"`, async () => {
      const err = await call(what);
      assert.equal(err.code, code);
      assert.equal(err.details, details);
    });
  }

  it('a named error is an Error with its name, status and cause, and a grpc-js ServiceError', () => {
    const cause = new Error('pg: connection terminated');
    const err: StatusError = new FailedError('ListMessages failed: pg: connection terminated', { cause });
    assert.ok(err instanceof Error && err instanceof UnavailableError);
    assert.equal(err.name, 'FailedError');
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    assert.equal(err.cause, cause);
    assert.ok(isGrpcError(err));
    assert.ok(statusError(grpc.status.NOT_FOUND, 'x') instanceof NotFoundError);
  });
});
