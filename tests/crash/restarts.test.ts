// I3 under load, for the platform's dependencies: while a steady stream of
// messages comes in, nats-server is SIGKILLed and started again on the same
// port and store, and Postgres crashes (immediate shutdown, then recovery from
// its WAL) — a private cluster of this test file (private-postgres.ts), since
// the machine's cluster is shared. Afterwards nothing that got a 250 may be
// lost, and extra copies at the sinks stay within what was in flight.
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Harness } from '@tern/devkit';
import { startPrivatePostgres, type PrivatePostgres } from './private-postgres';
import { assertConverged, converge, crashNats, inflightNow, Load, sleep, startWorld, summary, type CrashRecord, type World } from './scenario';

const harness = new Harness({ name: 'crash-restarts' });
let world: World;
let postgres: PrivatePostgres;

before(async () => {
  postgres = await startPrivatePostgres({ logFile: path.join(harness.logDir, 'postgres.log') });
  harness.defer(() => postgres.close(), 'stop private Postgres');
  const url = await postgres.createDatabase('tern_crash_restarts');
  await harness.runMigrate(url);
  world = await startWorld(harness, { databaseUrl: url, destHost: '127.0.0.42', senderHost: '127.0.0.43' });
});

after(() => harness.close());

async function crashPostgres(crashes: CrashRecord[], downMs: number): Promise<void> {
  const inflight = await inflightNow(world);
  const at = Date.now();
  await postgres.crash();
  await sleep(downMs);
  await postgres.start();
  crashes.push({ what: 'Postgres immediate shutdown (crash), then start (WAL recovery)', at, inflight, downMs: Date.now() - at, dupWindow: true });
}

test('NATS killed and restarted, Postgres crashed and restarted, under a steady stream: nothing accepted is lost', async () => {
  const t0 = Date.now();
  const load = new Load(world, { tag: 'r', clients: 4, ratePerSec: 10 });
  const crashes: CrashRecord[] = [];
  load.start();
  await sleep(4_000);
  await crashNats(world, crashes);
  await sleep(6_000);
  await crashPostgres(crashes, 2_000);
  await sleep(6_000);
  // Both at once.
  const inflight = await inflightNow(world);
  const at = Date.now();
  await Promise.all([world.nats.kill(), postgres.crash()]);
  await sleep(1_500);
  await Promise.all([world.nats.restart(), postgres.start()]);
  crashes.push({ what: 'NATS SIGKILL + Postgres crash together, then both started', at, inflight, downMs: Date.now() - at, dupWindow: true });
  await sleep(6_000);
  await load.stop();

  // Report requests fetched by bounce just before NATS died are redelivered
  // after the `bounce` consumer's ack wait (2 minutes): allow for it.
  const t = await converge(world, load.sent, 150_000);
  console.log(summary('restarts', t, crashes, Date.now() - t0));
  await assertConverged(world, load, t, crashes);
});
