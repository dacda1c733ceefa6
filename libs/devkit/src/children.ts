// Child processes of a test (services, nats-server, scripts): none outlives
// the test process, and a failure quotes the end of its log.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Every child is SIGKILLed if the test process exits without stopping it. */
export function trackChild(c: ChildProcess): void {
  liveChildren.add(c);
  c.once('exit', () => liveChildren.delete(c));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const ch of liveChildren) {
        try {
          ch.kill('SIGKILL');
        } catch {
          /* gone */
        }
      }
    });
  }
}

export function tail(file: string, lines = 40): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '';
  }
}
