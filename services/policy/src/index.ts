// In-process use of the policy service (tests, harnesses); pods run main.ts.
export { createApp, type App, type AppDeps } from './app';
export { loadConfig, type Config } from './config';
export { detectRoutingTrick, parseAddress, type RoutingTrick } from './address';
