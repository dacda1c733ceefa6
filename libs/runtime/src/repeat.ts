// A background task on a fixed interval (reload a table, refresh a cache).
// Runs never overlap: the next is scheduled when the previous has settled,
// so a slow database cannot pile reloads up behind each other. The timer
// does not keep the process alive.

export interface Repeating {
  /** No run starts after this; one under way finishes on its own. */
  stop(): void;
}

/**
 * Runs `task` every `intervalMs` after a first wait of `intervalMs`. A
 * failed run goes to `onError` (the caller keeps what it had: the previous
 * table, the previous cache) and the next run comes on schedule.
 */
export function repeatEvery(intervalMs: number, task: () => Promise<unknown> | unknown, onError: (err: unknown) => void): Repeating {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(run, intervalMs);
    timer.unref();
  };
  const run = (): void => {
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(task());
    } catch (err) {
      result = Promise.reject(err);
    }
    result.catch(onError).finally(schedule);
  };
  schedule();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
