// In-process use of the queue service (tests, harnesses); pods run main.ts.
export { createApp, type App, type AppDeps } from './app';
export { loadConfig, type Config } from './config';
export { newId, isQueueId, recipientId, parseRecipientId } from './ids';
