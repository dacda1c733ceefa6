// DeliveryService.VerifyRecipient's refusals (services/delivery/src/errors.ts)
// through a real gRPC server and client on loopback: a caller sees the
// same status and message as before the named errors.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createClient, grpc, GrpcServer, unary } from '@tern/grpc';
import { DeliveryServiceClient, DeliveryServiceService } from '@tern/proto';
import { createTelemetry } from '@tern/telemetry';
import { RouteCache, Verifier } from '../src/verify';
import type { WorkerDeps } from '../src/worker';

let server: GrpcServer;
let client: DeliveryServiceClient;

before(async () => {
  const { logger, tracer, meter } = createTelemetry({ service: 'delivery-test', logLevel: 'silent' });
  // maxInflight 0: every well-formed address finds the pod busy, so nothing here dials out.
  const verifier = new Verifier({ logger } as WorkerDeps, {} as RouteCache, { sender: '', timeoutMs: 1_000, maxInflight: 0, maxSessionsPerPeer: 1 }, meter);
  server = new GrpcServer({ logger, tracer });
  server.add('tern.v1.DeliveryService', DeliveryServiceService, verifier.service());
  await server.listen('127.0.0.1', 0);
  server.serve();
  client = createClient(DeliveryServiceClient, `127.0.0.1:${server.port}`, { deadlineMs: 5_000 });
});

after(async () => {
  client.close();
  await server.shutdown(100);
});

const verify = (address: string) => unary(client.verifyRecipient.bind(client), { address });

test('an address that is not local@domain: INVALID_ARGUMENT naming the field', async () => {
  await assert.rejects(verify('no-at-sign'), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(err.details, 'address: "no-at-sign" is not an address (local@domain)');
    return true;
  });
});

test('TERN_VERIFY_MAX_INFLIGHT verifications running: RESOURCE_EXHAUSTED naming the variable', async () => {
  await assert.rejects(verify('user@example.test'), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(err.details, '0 verifications in progress on this delivery pod (TERN_VERIFY_MAX_INFLIGHT)');
    return true;
  });
});
