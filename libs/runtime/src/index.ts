// Process lifecycle shared by every service: the entry point (defineService),
// start and graceful stop (runService), one lifecycle for a service's parts
// (Components: started in order, drained in reverse), the wake/poll loop of
// background workers, tasks on an interval (repeatEvery), and the
// micro-batcher.
export { runService, type RunningApp, type RunOptions } from './lifecycle';
export { defineService, type AppDeps, type CommonConfig, type ServiceDefinition } from './service';
export { Components, Part, part, together, type Lifecycle, type LifecycleState, type PartSteps } from './components';
export { HttpServerPart } from './http-part';
export { PollLoop, pollBackoffMs, type PollLoopOptions } from './poll-loop';
export { repeatEvery, type Repeating } from './repeat';
export { ClosedError, StartError, errorMessage } from './errors';
export { Batcher, type BatcherOptions } from './batcher';
