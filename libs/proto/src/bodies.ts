// Messages that carry a message body, encoded with the body copied once.
//
// The generated encoders write into one growing buffer: a 64 KiB body is
// copied into it, moved again as the buffer doubles and as each enclosing
// message's length is prepended (fork/join), then copied out by finish().
// Here everything but the body is encoded by the generated code, the body's
// key and length by the same wire writer, and the pieces are concatenated
// once. Field order on the wire does not matter to protobuf decoders; the
// body goes last.
import { makeGenericClientConstructor, type ChannelCredentials, type ClientOptions } from '@grpc/grpc-js';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { EnqueueMessage, QueueServiceService, type EnqueueBatchRequest, type QueueServiceClient } from './gen/tern/v1/queue';

const EMPTY = Buffer.alloc(0);

/** The key and length of a length-delimited field. */
function delimitedKey(field: number, length: number): Uint8Array {
  return new BinaryWriter().tag(field, WireType.LengthDelimited).uint32(length).finish();
}

/** `encoded` (a message) with a bytes field appended after it; no field at all for an empty value, as the generated code does. */
export function appendBytesField(encoded: Uint8Array, field: number, value: Uint8Array | null | undefined): Uint8Array {
  if (!value?.length) return encoded;
  return Buffer.concat([encoded, delimitedKey(field, value.length), value]);
}

const REQUEST_MESSAGES_FIELD = 1; // EnqueueBatchRequest.messages
const MESSAGE_BODY_FIELD = 2; // EnqueueMessage.body

/** EnqueueBatchRequest on the wire, each body copied once (into the result). */
export function encodeEnqueueBatch(request: EnqueueBatchRequest): Buffer {
  const parts: Uint8Array[] = [];
  let total = 0;
  for (const m of request.messages) {
    const rest = EnqueueMessage.encode({ ...m, body: EMPTY }).finish();
    const bodyKey = m.body.length ? delimitedKey(MESSAGE_BODY_FIELD, m.body.length) : EMPTY;
    const length = rest.length + bodyKey.length + m.body.length;
    const key = delimitedKey(REQUEST_MESSAGES_FIELD, length);
    parts.push(key, rest, bodyKey, m.body);
    total += key.length + length;
  }
  return Buffer.concat(parts, total);
}

/** The QueueService definition with EnqueueBatch serialized by encodeEnqueueBatch; everything else as generated. */
export const QueueServiceBodyService = {
  ...QueueServiceService,
  enqueueBatch: { ...QueueServiceService.enqueueBatch, requestSerialize: encodeEnqueueBatch },
} as const;

/** A QueueService client whose EnqueueBatch requests copy each body once (the ingress' hot path). */
export const QueueServiceBodyClient = makeGenericClientConstructor(QueueServiceBodyService, 'tern.v1.QueueService') as unknown as {
  new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>): QueueServiceClient;
  service: typeof QueueServiceBodyService;
  serviceName: string;
};
