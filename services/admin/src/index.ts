// In-process use of the admin service (tests, harnesses); pods run main.ts.
export { createApp, type App, type AppDeps } from './app';
export { loadConfig, type Config } from './config';
export { OPERATOR_KEY, UNAUTHENTICATED_MESSAGE } from './auth';
export { OWNER_KEY } from './owners';
export { parseTokens } from './tokens';
