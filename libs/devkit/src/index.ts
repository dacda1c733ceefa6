// @tern/devkit: the test and demo kit shared by `npm start` and every
// cross-service test: an authoritative DNS server, SMTP/LMTP sinks, an OTLP
// trace receiver, self-signed certificates, and a process harness (test
// databases, private nats-server, services as child processes: harness.ts
// over paths, ports, postgres, nats, children, services).
export * from './dns';
export * from './sink';
export * from './otlp';
export * from './tls';
export { repoRoot, nodeBinary, SERVICE_NODE_FLAGS } from './paths';
export { freePort } from './ports';
export * from './postgres';
export * from './nats';
export { baseEnv, grpcHealthCheck, httpHealthCheck, startService, runNodeScript, type Readiness, type StartServiceOptions, type ExitInfo, type ServiceHandle } from './services';
export * from './harness';
export * from './platform';
export * from './postfix';
export * from './unix-forward';
export * from './dnssec';
