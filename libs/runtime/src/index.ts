// Process lifecycle shared by every service: the entry point (defineService),
// start and graceful stop (runService), and the micro-batcher.
export { runService, type RunningApp, type RunOptions } from './lifecycle';
export { defineService, type CommonConfig, type ServiceDefinition } from './service';
export { Batcher, type BatcherOptions } from './batcher';
