// Generated contracts (ts-proto, outputServices=grpc-js) re-exported in one place.
// Regenerate with `npm run generate`; CI fails if the checked-in output differs.
export * from './gen/tern/v1/common';
export * from './gen/tern/v1/policy';
export * from './gen/tern/v1/queue';
export * from './gen/tern/v1/events';
export * from './gen/tern/v1/lifecycle';
export * from './gen/tern/v1/webhooks';
export * from './gen/tern/v1/delivery';
export * from './gen/tern/v1/admin';
export { Timestamp } from './gen/google/protobuf/timestamp';
export { descriptorSet } from './gen/descriptor';
export { matchRoute } from './routes';
// The protobuf wire reader and writer the generated code uses, for the rare field read or written by hand.
export { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
// Messages with bodies encoded without the generated encoder's extra copies.
export { appendBytesField, decodeEnqueueBatch, decodeEnqueueStream, encodeEnqueueBatch, encodeEnqueueStream, QueueServiceBodyClient, QueueServiceBodyService, type EnqueueMessageParts } from './bodies';
