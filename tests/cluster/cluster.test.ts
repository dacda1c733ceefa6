// Tern in a real Kubernetes cluster, as a user runs it: `helm install`,
// `kubectl scale`, `helm upgrade` under load, pods killed, the node drained.
// Each test is one user's story, told through kubectl, helm, SMTP and the
// `tern` CLI only; they run in order on one release.
//
// Needs the local cluster without a release (`npm run cluster -- up
// --no-release`, which `npm test` and `npm run test:cluster` run first): the
// node, NATS, Postgres, the images and the Secrets a user makes before
// installing. The recipients' mail servers are one SMTP sink on the host at
// the pods' bridge address, reached through a `.test` smart-host route; the
// webhook receiver is an HTTP server there too.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { SmtpSink } from '@tern/devkit';
import { Receiver } from '../../services/webhooks/test/receiver';
import { metricSum } from '../ops/helpers';
import { adminCli, clusterEnv, Kube, podReady, scrape, sleep, SmtpLoad, summarize, waitDelivered, type Pod } from './kube';
import { FlowRecorder, judge, type NetworkPolicy } from './netpol';

const env = clusterEnv();
const kube = new Kube(env);
const ns = env.NAMESPACE;
const release = env.RELEASE;
/** Deployments of the chart and their replicas after install (the chart's defaults). */
const DEFAULT_REPLICAS: Record<string, number> = { ingress: 2, policy: 2, queue: 2, delivery: 2, bounce: 1, webhooks: 1, admin: 1 };
const COMPONENTS = Object.keys(DEFAULT_REPLICAS);

/**
 * Knobs of this test's release on top of the local values: a delivery job
 * whose pod was killed comes back after 20 s instead of 15 minutes, and
 * deferrals retry within seconds, so convergence fits in a test. The webhook
 * receiver is on the host's bridge address (reserved, 198.18.0.0/15) over
 * http, which webhooks refuses unless told, as for a receiver inside a
 * cluster.
 */
const TEST_VALUES = [
  '--set-string', 'queue.env.TERN_QUEUE_LEASE_S=20',
  '--set-string', 'queue.env.TERN_QUEUE_BACKOFF_MIN_S=1',
  '--set-string', 'queue.env.TERN_QUEUE_BACKOFF_MAX_S=3',
  '--set-string', 'queue.env.TERN_QUEUE_DEST_PROBE_S=2',
  '--set', 'webhooks.allowHttp=true',
  '--set', 'webhooks.allowPrivate=true',
];

let sink: SmtpSink;
let receiver: Receiver;
let smtpIp: string;
/** Every connection made during the stories, for the NetworkPolicy check at the end. */
const flows = new FlowRecorder(kube);

/**
 * The stories build on each other (one release): after one fails, the next
 * ones are skipped, naming it, instead of failing for the same cause.
 */
let failedStory: string | undefined;
function story(name: string, fn: () => Promise<void>): void {
  test(name, async (t) => {
    if (failedStory) return t.skip(`skipped: the story "${failedStory}" failed`);
    try {
      await fn();
    } catch (err) {
      failedStory = name.split(':')[0];
      throw err;
    }
  });
}

function load(tag: string, o: Partial<ConstructorParameters<typeof SmtpLoad>[0]> = {}): SmtpLoad {
  return new SmtpLoad({ host: smtpIp, port: 25, localAddress: env.HOST_ADDR, tag, sessions: 10, messagesPerSession: 10, ...o });
}

async function waitPodsReady(expected: Record<string, number>, timeoutMs = 240_000): Promise<Pod[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pods = await kube.pods();
    const ready = (c: string) => pods.filter((p) => p.metadata.labels['app.kubernetes.io/component'] === c && podReady(p)).length;
    const all = (c: string) => pods.filter((p) => p.metadata.labels['app.kubernetes.io/component'] === c).length;
    const last = Object.keys(expected).map((c) => `${c} ${ready(c)}/${all(c)} (want ${expected[c]})`).join(', ');
    if (Object.entries(expected).every(([c, n]) => ready(c) === n && all(c) === n)) return pods;
    if (Date.now() > deadline) assert.fail(`pods not all Ready within ${timeoutMs} ms: ${last}`);
    await sleep(1000);
  }
}

async function assertAllDelivered(l: SmtpLoad, timeoutMs: number): Promise<void> {
  const accepted = l.accepted;
  const { missing, duplicates } = await waitDelivered(sink, accepted, timeoutMs);
  assert.deepEqual(
    missing.map((s) => `${s.rcpt} ${s.queueId}`),
    [],
    `every accepted message reaches its recipient (${accepted.length} accepted, ${duplicates} duplicates): ${summarize(l.report)}`,
  );
}

describe('Tern on a real Kubernetes cluster', { concurrency: 1 }, () => {
  before(async () => {
    const existing = await kube.kubectlRaw(['-n', ns, 'get', 'deployments', '-l', `app.kubernetes.io/instance=${release}`, '-o', 'name']);
    assert.equal(existing.stdout.trim(), '', `the cluster has a release already: start from \`npm run cluster -- up --no-release\`, which removes it`);
    sink = await new SmtpSink({ host: env.HOST_ADDR, port: Number(env.SINK_PORT), hostname: 'mx.sink.test' }).start();
    receiver = await new Receiver().start(env.HOST_ADDR);
    // The webhooks KEK Secret, made before installing as a user would (the chart reads it if it exists).
    await kube.kubectl('-n', ns, 'delete', 'secret', `${release}-webhooks-kek`, '--ignore-not-found');
    await kube.kubectl('-n', ns, 'create', 'secret', 'generic', `${release}-webhooks-kek`, `--from-literal=kek=${crypto.randomBytes(32).toString('base64')}`);
    await flows.start();
  });

  after(async () => {
    await flows.stop();
    await sink?.close();
    await receiver?.close();
  });

  story('install: helm install --wait from nothing; the migration ran once; a message delivered, one bounced; the CLI shows both', async () => {
    const started = Date.now();
    await kube.helm(
      'install', release, env.CHART, '-n', ns, '--wait', '--timeout', '8m',
      '-f', env.VALUES,
      '--set', `image.repository=${env.IMAGE_REPOSITORY}`, '--set', `image.tag=${env.IMAGE_TAG}`,
      '--set', `delivery.networkPolicy.extraEgressPorts[0]=${env.SINK_PORT}`,
      '--set', `webhooks.networkPolicy.extraEgressPorts[0]=${receiver.port}`,
      ...TEST_VALUES,
    );
    const installMs = Date.now() - started;
    smtpIp = await kube.serviceIp(`${release}-smtp`);

    // The pre-install hook Job ran once and succeeded (the chart deletes it
    // on success; its events stay).
    const events = await kube.json<{ items: { reason: string; metadata: { creationTimestamp: string }; involvedObject: { kind: string; name: string } }[] }>('-n', ns, 'get', 'events');
    const since = Math.floor(started / 1000) * 1000; // event times are whole seconds
    const jobEvents = events.items.filter(
      (e) => e.involvedObject.kind === 'Job' && e.involvedObject.name === `${release}-migrate` && Date.parse(e.metadata.creationTimestamp) >= since,
    );
    assert.equal(jobEvents.filter((e) => e.reason === 'SuccessfulCreate').length, 1, `the migration Job made one pod: ${JSON.stringify(jobEvents)}`);
    assert.equal(jobEvents.filter((e) => e.reason === 'Completed').length, 1, 'the migration Job completed');

    const pods = await waitPodsReady(DEFAULT_REPLICAS, 10_000);
    for (const p of pods) assert.equal(p.status.containerStatuses?.[0]?.restartCount, 0, `${p.metadata.name} never restarted`);

    const cli = await adminCli(kube);
    try {
      await cli.run('route', 'set', '.test', '--kind', 'smarthost', '--target', `${env.HOST_ADDR}:${env.SINK_PORT}`, '--tls-policy', 'none');
      await sleep(6000); // every queue replica reloads its routes within 5 s
      const l = load('install', {
        sessions: 2,
        messagesPerSession: 1,
        recipient: (n) => (n === 1 ? 'friend@example.test' : 'permfail-install@example.test'),
      });
      l.start();
      const report = await l.done();
      assert.equal(l.accepted.length, 2, summarize(report));
      const [delivered, bounced] = [report.sent.find((s) => s.rcpt.startsWith('friend'))!, report.sent.find((s) => s.rcpt.startsWith('permfail'))!];

      await sink.waitForMessages(2, 60_000);
      const deadline = Date.now() + 60_000;
      const report550 = () => sink.messages.find((m) => m.mailFrom === '' && m.raw.toString('latin1').includes('permfail-install@example.test'));
      while (!report550() && Date.now() < deadline) await sleep(250);
      const dsn = report550();
      assert.ok(dsn, 'a delivery status report for the permfail recipient reached the sender');
      assert.match(dsn.raw.toString('latin1'), /Action: failed/i);
      assert.ok(sink.messages.some((m) => m.rcptTo.includes('friend@example.test')), 'the message to friend@example.test was delivered');

      const shownDelivered = await cli.run('message', 'show', delivered.queueId!);
      assert.match(shownDelivered, /friend@example\.test[^\n]*delivered/i, shownDelivered);
      const shownBounced = await cli.run('message', 'show', bounced.queueId!);
      assert.match(shownBounced, /permfail-install@example\.test[^\n]*(failed|bounced)/i, shownBounced);
      process.stdout.write(`# install: helm install --wait took ${(installMs / 1000).toFixed(1)} s\n`);
    } finally {
      cli.stop();
    }
  });

  story('scale: ingress and delivery to 3 each; 2,000 messages over 20 sessions reach every pod, nothing lost', async () => {
    await kube.kubectl('-n', ns, 'scale', `deployment/${release}-ingress`, `deployment/${release}-delivery`, '--replicas', '3');
    // The same through the chart, so that later upgrades keep it (no new pods: the template is unchanged).
    await kube.helm('upgrade', release, env.CHART, '-n', ns, '--reuse-values', '--wait', '--timeout', '5m', '--set', 'ingress.replicas=3', '--set', 'delivery.replicas=3');
    const pods = await waitPodsReady({ ...DEFAULT_REPLICAS, ingress: 3, delivery: 3 });

    const l = load('scale', { sessions: 20, messagesPerSession: 100 });
    l.start();
    const report = await l.done();
    assert.equal(l.accepted.length, 2000, summarize(report));
    await assertAllDelivered(l, 120_000);

    const ipsOf = (c: string) => pods.filter((p) => p.metadata.labels['app.kubernetes.io/component'] === c).map((p) => [p.metadata.name, p.status.podIP!] as const);
    const sessions = await Promise.all(ipsOf('ingress').map(async ([name, ip]) => [name, metricSum(await scrape(ip, 9101), 'tern_ingress_sessions_total')] as const));
    const delivered = await Promise.all(ipsOf('delivery').map(async ([name, ip]) => [name, metricSum(await scrape(ip, 9104), 'tern_delivery_recipients_total')] as const));
    process.stdout.write(`# scale: sessions per ingress pod ${JSON.stringify(sessions)}; recipients per delivery pod ${JSON.stringify(delivered)}\n`);
    for (const [name, n] of sessions) assert.ok(n > 0, `ingress pod ${name} accepted sessions`);
    for (const [name, n] of delivered) assert.ok(n > 0, `delivery pod ${name} delivered`);
  });

  story('rolling upgrade under load: every pod replaced, clients see only 4xx, nothing lost', async () => {
    const before = new Set((await kube.pods()).map((p) => p.metadata.uid));
    const l = load('roll', { sessions: 8, messagesPerSession: 5, gapMs: 100, continuous: true, retry: true });
    l.start();
    await sleep(3000);
    const stamp = String(Date.now());
    await kube.helm('upgrade', release, env.CHART, '-n', ns, '--reuse-values', '--wait', '--timeout', '8m', ...COMPONENTS.flatMap((c) => ['--set-string', `${c}.podAnnotations.tern-test/rollout=${stamp}`]));
    await sleep(3000);
    // Messages refused during the roll were sent again by their clients (retry), as an MTA would.
    const report = await l.stop();

    const after = await waitPodsReady({ ...DEFAULT_REPLICAS, ingress: 3, delivery: 3 }, 60_000);
    assert.deepEqual(after.filter((p) => before.has(p.metadata.uid)).map((p) => p.metadata.name), [], 'every pod was replaced');
    process.stdout.write(`# rolling upgrade: ${summarize(report)}\n`);
    assert.deepEqual(report.fiveXX, [], 'no 5xx reply during the upgrade');
    assert.deepEqual(report.noReply, [], 'no session hung or broke without a reply');
    assert.ok(l.accepted.length > 50, `messages flowed during the upgrade: ${summarize(report)}`);
    await assertAllDelivered(l, 120_000);
  });

  story('pods killed with --grace-period=0 --force (queue, delivery) under load: converges, nothing lost', async () => {
    const l = load('kill', { sessions: 6, messagesPerSession: 5, gapMs: 50, continuous: true, retry: true });
    l.start();
    await sleep(4000);
    const victims = [(await kube.pods('queue'))[0]!, (await kube.pods('delivery'))[0]!].map((p) => p.metadata.name);
    await kube.kubectl('-n', ns, 'delete', 'pod', ...victims, '--grace-period=0', '--force');
    await sleep(10_000);
    const report = await l.stop();
    process.stdout.write(`# force delete of ${victims.join(', ')}: ${summarize(report)}\n`);
    assert.deepEqual(report.fiveXX, [], 'no 5xx reply while pods were killed');
    await waitPodsReady({ ...DEFAULT_REPLICAS, ingress: 3, delivery: 3 }, 120_000);
    // The lease (20 s here) brings back what the killed delivery pod held.
    await assertAllDelivered(l, 180_000);
  });

  story('kubectl drain respects the PodDisruptionBudgets', async () => {
    const replicas = { ...DEFAULT_REPLICAS, ingress: 3, delivery: 3 };
    const pdbs = await kube.json<{ items: { metadata: { name: string }; spec: { maxUnavailable?: number } }[] }>('-n', ns, 'get', 'pdb', '-l', `app.kubernetes.io/instance=${release}`);
    assert.equal(pdbs.items.length, COMPONENTS.length, 'one PodDisruptionBudget per service');

    // Watch availability while the drain runs: no Deployment may fall below replicas - maxUnavailable (1).
    let watching = true;
    const lows: string[] = [];
    const watcher = (async () => {
      while (watching) {
        const pods = await kube.pods();
        for (const [c, n] of Object.entries(replicas)) {
          const ready = pods.filter((p) => p.metadata.labels['app.kubernetes.io/component'] === c && podReady(p)).length;
          if (ready < n - 1) lows.push(`${c}: ${ready} Ready of ${n}`);
        }
        await sleep(500);
      }
    })();
    const drain = await kube.kubectlRaw(
      ['drain', env.NODE_NAME, '--pod-selector', `app.kubernetes.io/instance=${release}`, '--ignore-daemonsets', '--delete-emptydir-data', '--timeout', '45s'],
      120_000,
    );
    watching = false;
    await watcher;
    await kube.kubectl('uncordon', env.NODE_NAME);

    // One node: an evicted pod's replacement cannot start while it is cordoned,
    // so after one eviction per Deployment the budget refuses the next ones and
    // drain waits until its timeout.
    assert.notEqual(drain.code, 0, `drain cannot finish on one node without breaking a budget: ${drain.stdout}${drain.stderr}`);
    assert.match(drain.stdout + drain.stderr, /disruption budget/i, 'drain was refused by a PodDisruptionBudget');
    assert.deepEqual(lows, [], 'no Deployment went below its budget during the drain');
    await waitPodsReady(replicas, 180_000);
  });
  story('webhooks: an endpoint added with the CLI gets the delivered event of a message, signed with the secret it printed, sealed under the KEK Secret', async () => {
    // The pod read the KEK Secret made before the install (its start line says how secrets are stored).
    const logs = await kube.kubectl('-n', ns, 'logs', `deployment/${release}-webhooks`);
    assert.match(logs, /"msg":"webhooks serving"/, logs.slice(-2000));
    assert.match(logs, /"secrets":"sealed"/, 'TERN_WEBHOOKS_KEK reached the pod from the Secret');
    const cli = await adminCli(kube);
    try {
      const path = '/cluster';
      const added = await cli.run('webhook', 'add', `http://${env.HOST_ADDR}:${receiver.port}${path}`, '--events', 'delivered');
      const secret = /^Signing secret: (whsec_\S+)$/m.exec(added)?.[1];
      assert.ok(secret, `tern webhook add printed the secret: ${added}`);
      receiver.secret(path, secret);

      const l = load('webhook', { sessions: 1, messagesPerSession: 1, recipient: () => 'hook@example.test' });
      l.start();
      await l.done();
      assert.equal(l.accepted.length, 1, summarize(l.report));
      const queueId = l.accepted[0]!.queueId!;
      type Event = { type: string; data: { queueId: string } };
      const ours = () => receiver.of(path).find((r) => (r.json as Event | undefined)?.data?.queueId === queueId);
      // The consumer may still be reading the earlier stories' events: the endpoint gets ours after them.
      const deadline = Date.now() + 180_000;
      while (!ours() && Date.now() < deadline) await sleep(500);
      const got = ours();
      assert.ok(got, `the delivered event of ${queueId} reached the receiver within 180 s (${receiver.of(path).length} requests there); tern webhook ls: ${await cli.run('webhook', 'ls')}`);
      assert.equal((got.json as Event).type, 'message.delivered');
      assert.equal(got.valid, true, 'its signature verifies with the secret tern webhook add printed');
      assert.ok(receiver.of(path).every((r) => (r.json as Event).type === 'message.delivered'), 'only the event types it asked for');
      assert.match(await cli.run('webhook', 'ls'), /active/);
    } finally {
      cli.stop();
    }
  });
  story('NetworkPolicies: every connection the platform made in these stories is one its policies admit', async () => {
    await flows.stop();
    const policies = (await kube.json<{ items: NetworkPolicy[] }>('get', 'networkpolicies', '-A')).items;
    assert.equal(policies.filter((p) => p.metadata.namespace === ns).length, COMPONENTS.length, 'one NetworkPolicy per service');
    const nsList = await kube.json<{ items: { metadata: { name: string; labels?: Record<string, string> } }[] }>('get', 'namespaces');
    const namespaces = new Map(nsList.items.map((n) => [n.metadata.name, n.metadata.labels ?? {}]));
    const opts = { namespace: ns, nodeAddresses: [env.HOST_ADDR, '198.19.255.1'], clientPorts: [2525, 2587, 2465] };
    const verdicts = judge(flows.flows.values(), flows.pods, namespaces, policies, opts);

    // What the platform must have done, so that the check is not vacuous.
    const seen = (what: RegExp) => verdicts.some((v) => what.test(`${v.from} -> ${v.to}`));
    for (const expected of [
      /tern\/tern-ingress-\S+ -> tern\/tern-policy-\S+:7002\/tcp/,
      /tern\/tern-ingress-\S+ -> tern\/tern-queue-\S+:7003\/tcp/,
      /tern\/tern-queue-\S+ -> 198\.18\.0\.1:5433\/tcp/,
      /tern\/tern-queue-\S+ -> nats\/nats-0:4222\/tcp/,
      /tern\/tern-delivery-\S+ -> 198\.18\.0\.1:\d+\/tcp/,
      /tern\/tern-admin-\S+ -> tern\/tern-webhooks-\S+:7006\/tcp/,
      new RegExp(`tern\\/tern-webhooks-\\S+ -> 198\\.18\\.0\\.1:${receiver.port}\\/tcp`),
      /tern\/tern-webhooks-\S+ -> nats\/nats-0:4222\/tcp/,
      /tern\/tern-\w+-\S+ -> kube-system\/coredns-\S+:53\/udp/,
      /198\.18\.0\.1 -> tern\/tern-ingress-\S+:2525\/tcp/,
    ]) {
      assert.ok(seen(expected), `a connection ${expected} was made: ${verdicts.map((v) => `${v.from} -> ${v.to}`).slice(0, 40).join('; ')}`);
    }
    // And the judge refuses what the policies do not admit.
    const delivery = [...flows.pods.entries()].find(([, p]) => p.namespace === ns && p.labels['app.kubernetes.io/component'] === 'delivery')!;
    const policy = [...flows.pods.entries()].find(([, p]) => p.namespace === ns && p.labels['app.kubernetes.io/component'] === 'policy')!;
    const webhooks = [...flows.pods.entries()].find(([, p]) => p.namespace === ns && p.labels['app.kubernetes.io/component'] === 'webhooks')!;
    const ingress = [...flows.pods.entries()].find(([, p]) => p.namespace === ns && p.labels['app.kubernetes.io/component'] === 'ingress')!;
    // (delivery does call policy: the admin API's DKIM keys.)
    const probes = judge(
      [
        { proto: 'tcp', src: delivery[0], dst: webhooks[0], dport: 7006 },
        { proto: 'tcp', src: webhooks[0], dst: policy[0], dport: 7002 },
        // Recipient callouts of relay domains: policy -> DeliveryService.VerifyRecipient; nobody else.
        { proto: 'tcp', src: policy[0], dst: delivery[0], dport: 7004 },
        { proto: 'tcp', src: ingress[0], dst: delivery[0], dport: 7004 },
      ],
      flows.pods,
      namespaces,
      policies,
      opts,
    );
    assert.ok(probes[0]?.refused, 'only admin may call webhooks');
    assert.ok(probes[1]?.refused, 'webhooks may not call policy (it calls no other service)');
    assert.equal(probes[2]?.refused, undefined, 'policy may call delivery on 7004 (recipient callouts)');
    assert.ok(probes[3]?.refused, 'only policy may call delivery');

    const refused = verdicts.filter((v) => v.refused).map((v) => `${v.from} -> ${v.to}: ${v.refused}`);
    process.stdout.write(`# NetworkPolicies: ${verdicts.length} distinct connections judged, ${refused.length} refused\n`);
    assert.deepEqual([...new Set(refused)], [], 'every connection the platform made is admitted by the NetworkPolicies');
  });
});
