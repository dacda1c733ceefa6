// @tern/bounce: builds RFC 3464 reports for ReportRequests (tern.reports) and
// enqueues them through the queue with the null sender.
export { createApp, retryDelay, type App, type AppDeps } from './app';
export { loadConfig, type Config } from './config';
export { processReport, isPermanent, type ReportDeps, type ReportOutcome, type ReportSettings } from './report';
