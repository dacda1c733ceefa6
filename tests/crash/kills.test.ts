// I3 under load: while a steady stream of messages comes in from several SMTP
// clients, the queue, delivery and bounce processes are SIGKILLed each in
// turn, then all three together, and restarted. Afterwards every recipient
// that got a 250 must end delivered at the recipients' sink or bounced with a
// report at the sender's sink (as its local part asks), none lost; extra
// copies at the sinks are counted and bounded by what was in flight at the
// kills (scenario.ts, assertConverged).
import { after, before, test } from 'node:test';
import { Harness } from '@tern/devkit';
import { assertConverged, converge, crash, Load, sleep, startWorld, summary, type CrashRecord, type World } from './scenario';

const harness = new Harness({ name: 'crash-kills' });
let world: World;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url);
  world = await startWorld(harness, { databaseUrl: db.url, destHost: '127.0.0.40', senderHost: '127.0.0.41' });
});

after(() => harness.close());

test('SIGKILL queue, delivery, bounce (each in turn, then together) under a steady stream: nothing accepted is lost', async () => {
  const t0 = Date.now();
  const load = new Load(world, { tag: 'k', clients: 4, ratePerSec: 10 });
  const crashes: CrashRecord[] = [];
  load.start();
  await sleep(4_000);
  await crash(world, ['queue'], crashes);
  await sleep(5_000);
  await crash(world, ['delivery'], crashes);
  await sleep(5_000);
  await crash(world, ['bounce'], crashes);
  await sleep(5_000);
  await crash(world, ['queue', 'delivery', 'bounce'], crashes);
  await sleep(5_000);
  await load.stop();

  // Work a killed process had taken comes back by the queue's lease (15 s)
  // or, for report requests bounce held, by the `bounce` consumer's ack wait
  // (2 minutes, libs/bus/src/topology.ts): allow for the latter.
  const t = await converge(world, load.sent, 150_000);
  const report = summary('kills', t, crashes, Date.now() - t0);
  console.log(report);
  await assertConverged(world, load, t, crashes);
});
