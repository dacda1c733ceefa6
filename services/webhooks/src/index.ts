// @tern/webhooks: lifecycle events to registered HTTPS endpoints, signed the
// Standard Webhooks way, from an outbox of deliveries in Postgres.
export { createApp, type App, type AppDeps } from './app';
export { loadConfig, type Config } from './config';
export { backoffMs } from './sender';
export { signature, signedHeaders, batchId, newSecret } from './sign';
export { isPublicAddress, checkEndpointUrl } from './address';
export { EVENT_TYPES, decodeEvents, payloadOf } from './events';
