// One lifecycle for every part of a service (a loop, a consumer, a server,
// a pool), after nats.js v3: start once; drain() stops taking work, finishes
// or hands back what is in flight, then closes; close() lets go at once; a
// part drained or closed refuses to start again. Components starts a
// service's parts in order and stops them in reverse, so each app.ts says
// its stop sequence once, by the order it starts things in.
import { ClosedError, StartError, errorMessage } from './errors';

export type LifecycleState = 'new' | 'starting' | 'running' | 'draining' | 'closed';

export interface Lifecycle {
  readonly state: LifecycleState;
  /** Starts the part; once (after drain() or close(): ClosedError). */
  start(): Promise<void>;
  /** Stops taking work, finishes or hands back what is in flight, then closes. Every call gets the same promise. */
  drain(): Promise<void>;
  /** Lets go of what the part holds at once, without waiting for work in flight. */
  close(): Promise<void>;
}

/** What a part does at each step; a missing drain closes, a missing close drains. */
export interface PartSteps {
  start?(): unknown;
  drain?(): unknown;
  close?(): unknown;
}

/**
 * The state machine every part goes through (new -> starting -> running ->
 * draining -> closed), over the steps it is given. Parts that are classes
 * extend it; plain resources (a pool's end(), a server's close()) get one
 * from part().
 */
export class Part implements Lifecycle {
  private current: LifecycleState = 'new';
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  /** The last stop step ran to its end (a failed drain still gets close's step). */
  private stoppedCleanly = false;

  constructor(
    readonly name: string,
    private readonly steps: PartSteps = {},
  ) {}

  get state(): LifecycleState {
    return this.current;
  }

  start(): Promise<void> {
    if (this.current === 'draining' || this.current === 'closed') return Promise.reject(new ClosedError(this.name));
    this.starting ??= (async () => {
      this.current = 'starting';
      await this.steps.start?.();
      // A drain() called while starting has moved the state on already.
      if (this.current === 'starting') this.current = 'running';
    })();
    return this.starting;
  }

  drain(): Promise<void> {
    this.stopping ??= this.finish(this.steps.drain ?? this.steps.close);
    return this.stopping;
  }

  close(): Promise<void> {
    if (this.current === 'closed' && this.stoppedCleanly) return Promise.resolve();
    // A drain under way is cut short: close's own step runs beside it.
    const closing = this.finish(this.steps.close ?? this.steps.drain);
    this.stopping ??= closing;
    return closing;
  }

  private async finish(step: (() => unknown) | undefined): Promise<void> {
    const started = this.current !== 'new';
    this.current = 'draining';
    try {
      // Stopping a part that is starting waits for its start (a failed start still gets its stop).
      if (this.starting) await this.starting.catch(() => undefined);
      if (started) await step?.call(this.steps);
      this.stoppedCleanly = true;
    } finally {
      this.current = 'closed';
    }
  }
}

/** A Part over plain steps: `part('pool', { drain: () => pool.end() })`. */
export function part(name: string, steps: PartSteps): Part {
  return new Part(name, steps);
}

/** Parts started together and drained together (their order does not matter). */
export function together(name: string, parts: Lifecycle[]): Part {
  return new Part(name, {
    start: () => Promise.all(parts.map((p) => p.start())),
    drain: () => Promise.all(parts.map((p) => p.drain())),
    close: () => Promise.all(parts.map((p) => p.close())),
  });
}

export interface ComponentsLog {
  warn(obj: object, msg: string): void;
}

/**
 * A service's parts in start order. start() starts them one after the
 * other; if one fails, the ones already started are closed, last first,
 * and a StartError naming the part is thrown. stop() drains every started
 * part, the last started first (so what takes work stops before what that
 * work needs); a part whose drain fails is closed, the others still drain,
 * and the first error is thrown at the end.
 */
export class Components {
  private readonly parts: { name: string; part: Lifecycle }[] = [];
  private readonly started: { name: string; part: Lifecycle }[] = [];
  private readonly life: Part;

  constructor(private readonly log?: ComponentsLog) {
    this.life = new Part('components', { start: () => this.startAll(), drain: () => this.drainAll() });
  }

  /** Adds a part after those added so far; returns it. */
  add<T extends Lifecycle>(name: string, p: T): T {
    if (this.life.state !== 'new') throw new Error(`Components.add(${name}) after start`);
    this.parts.push({ name, part: p });
    return p;
  }

  get state(): LifecycleState {
    return this.life.state;
  }

  /** Names of the parts in start order. */
  get names(): string[] {
    return this.parts.map((p) => p.name);
  }

  start(): Promise<void> {
    return this.life.start();
  }

  stop(): Promise<void> {
    return this.life.drain();
  }

  private async startAll(): Promise<void> {
    for (const p of this.parts) {
      try {
        // Counted as started before it finishes: a part that fails half way still gets its close.
        this.started.push(p);
        await p.part.start();
      } catch (err) {
        for (const s of [...this.started].reverse()) await s.part.close().catch(() => undefined);
        this.started.length = 0;
        throw new StartError(p.name, err);
      }
    }
  }

  private async drainAll(): Promise<void> {
    let first: unknown;
    for (const s of [...this.started].reverse()) {
      try {
        await s.part.drain();
      } catch (err) {
        first ??= err;
        this.log?.warn({ part: s.name, err: errorMessage(err) }, `${s.name} did not stop cleanly; closing it`);
        await s.part.close().catch(() => undefined);
      }
    }
    if (first !== undefined) throw first;
  }
}
