// Enqueue throughput: runs the built queue (dist/main.js) as its own process
// against a fresh database and a private NATS, drives it with concurrent
// Enqueue streams (4 KiB messages, 1-2 recipients), while a fake delivery
// answers every job with 250. Prints accepted msgs/s and settled recipients/s.
// Usage: node --import tsx services/queue/bench/throughput.ts [seconds] [concurrency]
import { spawn } from 'node:child_process';
import path from 'node:path';
import { AttemptOutcome } from '@tern/proto';
import { SERVICE_NODE_FLAGS } from '@tern/devkit';
import { body, createDatabase, FakeDelivery, freePort, header, queueClient, sleep, startNats } from '../test/helpers';

async function main() {
  const seconds = Number(process.argv[2] ?? 20);
  const concurrency = Number(process.argv[3] ?? 64);
  const db = await createDatabase();
  const nats = await startNats();
  const port = await freePort();
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, path.resolve(__dirname, '../dist/main.js')], {
    env: {
      ...process.env,
      TERN_DATABASE_URL: db.url,
      TERN_NATS_URL: nats.url,
      TERN_GRPC_LISTEN: `127.0.0.1:${port}`,
      TERN_METRICS_LISTEN: `127.0.0.1:${await freePort()}`,
      TERN_LOG_LEVEL: 'warn',
      TERN_QUEUE_DEST_CONCURRENCY_INIT: '20',
      TERN_QUEUE_DEST_CONCURRENCY_MAX: '50',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const client = queueClient(port);
  const delivery = await FakeDelivery.connect(nats.url);
  try {
    for (let i = 0; ; i++) {
      try {
        await client.status({});
        break;
      } catch {
        if (i > 100) throw new Error('queue did not start');
        await sleep(100);
      }
    }
    const msg = body(4096);
    let accepted = 0;
    let settled = 0;
    let stop = false;
    // Delivery side: answer every job at once.
    const deliver = (async () => {
      const consumer = await delivery.bus.js.consumers.get('TERN_JOBS', 'delivery');
      while (!stop) {
        const batch = await consumer.fetch({ max_messages: 500, expires: 1000 });
        const pending: Promise<unknown>[] = [];
        for await (const m of batch) {
          const { DeliveryJob } = await import('@tern/proto');
          const job = DeliveryJob.decode(m.data);
          m.ack();
          settled += job.recipients.length;
          pending.push(delivery.result(job, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250, enhanced: '2.0.0', text: 'ok' }));
        }
        await Promise.all(pending);
      }
    })();
    const t0 = Date.now();
    const workers = Array.from({ length: concurrency }, async (_, w) => {
      let n = 0;
      while (Date.now() - t0 < seconds * 1000) {
        const rcpts = n % 2 ? [`u${w}_${n}@d${n % 10}.example`] : [`u${w}_${n}@d${n % 10}.example`, `v${w}_${n}@d${(n + 1) % 10}.example`];
        await client.enqueue(header({}, rcpts), msg);
        accepted++;
        n++;
      }
    });
    const timer = setInterval(() => process.stdout.write(`  ${((Date.now() - t0) / 1000).toFixed(0)} s: ${accepted} accepted, ${settled} recipients dispatched\n`), 5000);
    await Promise.all(workers);
    const elapsed = (Date.now() - t0) / 1000;
    clearInterval(timer);
    process.stdout.write(`accepted ${accepted} messages in ${elapsed.toFixed(1)} s: ${(accepted / elapsed).toFixed(0)} msgs/s (concurrency ${concurrency}, 4 KiB)\n`);
    await sleep(3000);
    stop = true;
    await deliver;
    const done = (await db.query(`SELECT count(*)::int AS n FROM queue.recipients WHERE state = 4`)).rows[0].n;
    const total = (await db.query(`SELECT count(*)::int AS n FROM queue.recipients`)).rows[0].n;
    process.stdout.write(`delivered ${done} of ${total} recipients 3 s after the load stopped\n`);
  } finally {
    client.close();
    await delivery.close();
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await nats.stop();
    await db.drop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
