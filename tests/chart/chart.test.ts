// Issue 8: what charts/tern renders. Each test runs `helm template` with some
// values and asserts on the parsed objects (see render.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import {
  container,
  deployment,
  env,
  find,
  findAll,
  PORTS,
  RELEASE,
  render,
  renderError,
  SERVICES,
  type K8sObject,
  type Probe,
} from './render';

const defaults = render();

test('one Deployment per service, all from the same image, each started by its own entry argument', () => {
  const deployments = findAll(defaults, 'Deployment');
  assert.deepEqual(deployments.map((d) => d.metadata.name).sort(), SERVICES.map((s) => `${RELEASE}-${s}`).sort());
  const images = new Set(deployments.map((d) => container(d).image));
  assert.equal(images.size, 1, `one image for every service, got ${[...images].join(', ')}`);
  for (const s of SERVICES) assert.deepEqual(container(deployment(defaults, s)).args, [s]);
});

test('replicas of ingress and delivery change independently; the other services keep theirs', () => {
  const before = Object.fromEntries(SERVICES.map((s) => [s, deployment(defaults, s).spec?.replicas]));
  const objs = render({ ingress: { replicas: 5 }, delivery: { replicas: 9 } });
  for (const s of SERVICES) {
    const expected = s === 'ingress' ? 5 : s === 'delivery' ? 9 : before[s];
    assert.equal(deployment(objs, s).spec?.replicas, expected, `${s} replicas`);
  }
  assert.notEqual(before.ingress, 5);
  assert.notEqual(before.delivery, 9);
});

test('ingress autoscales on CPU and optionally on open sessions; its Deployment then carries no replicas', () => {
  const objs = render({
    ingress: { autoscaling: { enabled: true, minReplicas: 3, maxReplicas: 9, connections: { enabled: true, averageValue: '700' } } },
  });
  const hpa = find(objs, 'HorizontalPodAutoscaler', `${RELEASE}-ingress`);
  assert.equal(hpa.spec?.scaleTargetRef?.name, `${RELEASE}-ingress`);
  assert.equal(hpa.spec?.minReplicas, 3);
  assert.equal(hpa.spec?.maxReplicas, 9);
  const cpu = hpa.spec?.metrics?.find((m) => m.type === 'Resource');
  assert.equal(cpu?.resource?.name, 'cpu');
  assert.equal(cpu?.resource?.target.averageUtilization, 70);
  const sessions = hpa.spec?.metrics?.find((m) => m.type === 'Pods');
  assert.equal(sessions?.pods?.target.averageValue, '700');
  assert.equal(deployment(objs, 'ingress').spec?.replicas, undefined, 'no replicas under an HPA');
  assert.equal(deployment(objs, 'delivery').spec?.replicas, 2, 'delivery is untouched');
  assert.equal(findAll(objs, 'HorizontalPodAutoscaler').length, 1);
});

test('delivery autoscales on queue depth through a KEDA NATS JetStream ScaledObject, and no HPA of the chart', () => {
  const objs = render({ delivery: { autoscaling: { enabled: true, minReplicas: 2, maxReplicas: 25, keda: { enabled: true, lagThreshold: '40' } } } });
  const so = find(objs, 'ScaledObject', `${RELEASE}-delivery`);
  assert.equal(so.apiVersion, 'keda.sh/v1alpha1');
  assert.equal(so.spec?.scaleTargetRef?.name, `${RELEASE}-delivery`);
  assert.equal(so.spec?.minReplicaCount, 2);
  assert.equal(so.spec?.maxReplicaCount, 25);
  const trigger = so.spec?.triggers?.[0];
  assert.equal(trigger?.type, 'nats-jetstream');
  assert.equal(trigger?.metadata.stream, 'TERN_JOBS');
  assert.equal(trigger?.metadata.consumer, 'delivery');
  assert.equal(trigger?.metadata.lagThreshold, '40');
  assert.equal(findAll(objs, 'HorizontalPodAutoscaler').length, 0);
  assert.equal(deployment(objs, 'delivery').spec?.replicas, undefined);
  assert.equal(deployment(objs, 'ingress').spec?.replicas, 2);
  assert.equal(findAll(defaults, 'ScaledObject').length, 0, 'KEDA is optional');
});

test('without KEDA, delivery can scale with an HPA on an external queue-depth metric', () => {
  const objs = render({ delivery: { autoscaling: { enabled: true, queueDepth: { enabled: true, averageValue: '80' } } } });
  const hpa = find(objs, 'HorizontalPodAutoscaler', `${RELEASE}-delivery`);
  const ext = hpa.spec?.metrics?.find((m) => m.type === 'External');
  assert.equal(ext?.external?.metric.name, 'nats_consumer_num_pending');
  assert.deepEqual(ext?.external?.metric.selector?.matchLabels, { stream_name: 'TERN_JOBS', consumer_name: 'delivery' });
  assert.equal(ext?.external?.target.averageValue, '80');
  assert.match(renderError({ delivery: { autoscaling: { enabled: true } } }), /needs a metric/);
});

test('every service has a PodDisruptionBudget by default, selecting its own pods', () => {
  for (const s of SERVICES) {
    const pdb = find(defaults, 'PodDisruptionBudget', `${RELEASE}-${s}`);
    assert.equal(pdb.spec?.maxUnavailable, 1);
    assert.deepEqual(pdb.spec?.selector?.matchLabels, deployment(defaults, s).spec?.selector?.matchLabels);
  }
  const objs = render({ bounce: { pdb: { enabled: false } }, ingress: { pdb: { minAvailable: 2 } } });
  assert.equal(findAll(objs, 'PodDisruptionBudget').length, SERVICES.length - 1);
  const ingress = find(objs, 'PodDisruptionBudget', `${RELEASE}-ingress`);
  assert.equal(ingress.spec?.minAvailable, 2);
  assert.equal(ingress.spec?.maxUnavailable, undefined);
});

/** Every pod spec the chart renders (Deployments and the migration Job). */
function podSpecs(objs: K8sObject[]) {
  return objs.filter((o) => o.spec?.template).map((o) => ({ name: `${o.kind}/${o.metadata.name}`, spec: o.spec!.template!.spec }));
}

test('every pod is hardened: non-root, read-only root, no capabilities, no escalation, RuntimeDefault seccomp, no token', () => {
  const pods = podSpecs(defaults);
  assert.equal(pods.length, 8, 'seven Deployments and the migration Job');
  for (const { name, spec } of pods) {
    assert.equal(spec.securityContext?.runAsNonRoot, true, name);
    assert.equal(spec.securityContext?.seccompProfile?.type, 'RuntimeDefault', name);
    assert.equal(spec.automountServiceAccountToken, false, name);
    for (const c of spec.containers) {
      const sc = c.securityContext;
      assert.equal(sc?.runAsNonRoot, true, name);
      assert.equal(sc?.runAsUser, 10001, name);
      assert.equal(sc?.readOnlyRootFilesystem, true, name);
      assert.equal(sc?.allowPrivilegeEscalation, false, name);
      assert.deepEqual(sc?.capabilities?.drop, ['ALL'], name);
      assert.equal(sc?.capabilities?.add, undefined, name);
      assert.equal(sc?.seccompProfile?.type, 'RuntimeDefault', name);
      assert.ok(c.volumeMounts?.some((m) => m.mountPath === '/tmp'), `${name}: a writable /tmp under a read-only root`);
    }
  }
  const sa = find(defaults, 'ServiceAccount', RELEASE);
  assert.equal(sa.automountServiceAccountToken, false);
});

test("probes are native gRPC health checks on each service's gRPC port: readiness asks \"readiness\", startup and liveness ask \"liveness\"", () => {
  // The services answer "readiness" as /readyz (dependencies included) and
  // "liveness" as /healthz (never a dependency): a queue that is down must
  // take ingress out of its Service, not restart it (libs/grpc GrpcServer).
  const names = { startup: 'liveness', readiness: 'readiness', liveness: 'liveness' };
  for (const s of SERVICES) {
    const c = container(deployment(defaults, s));
    for (const [kind, probe] of [['startup', c.startupProbe], ['readiness', c.readinessProbe], ['liveness', c.livenessProbe]] as Array<[keyof typeof names, Probe | undefined]>) {
      assert.deepEqual(probe?.grpc, { port: PORTS[s].grpc, service: names[kind] }, `${s} ${kind} probe`);
      assert.equal(probe?.httpGet, undefined);
    }
    assert.equal(env(c, 'TERN_GRPC_LISTEN')?.value, `0.0.0.0:${PORTS[s].grpc}`);
    assert.equal(env(c, 'TERN_METRICS_LISTEN')?.value, `0.0.0.0:${PORTS[s].metrics}`);
    assert.ok(c.ports?.some((p) => p.name === 'grpc' && p.containerPort === PORTS[s].grpc));
  }
});

test('under mTLS the probes move to HTTP /healthz and /readyz (the kubelet gRPC probe has no TLS) and every service gets the TLS files', () => {
  const objs = render({ grpcTls: { enabled: true } });
  for (const s of SERVICES) {
    const c = container(deployment(objs, s));
    assert.deepEqual(c.startupProbe?.httpGet, { path: '/healthz', port: 'metrics' });
    assert.deepEqual(c.readinessProbe?.httpGet, { path: '/readyz', port: 'metrics' });
    assert.deepEqual(c.livenessProbe?.httpGet, { path: '/healthz', port: 'metrics' });
    assert.equal(env(c, 'TERN_GRPC_TLS_CERT_FILE')?.value, '/etc/tern/grpc-tls/tls.crt');
    assert.equal(env(c, 'TERN_GRPC_TLS_KEY_FILE')?.value, '/etc/tern/grpc-tls/tls.key');
    assert.equal(env(c, 'TERN_GRPC_TLS_CA_FILE')?.value, '/etc/tern/grpc-tls/ca.crt');
    const pod = deployment(objs, s).spec!.template!.spec;
    assert.equal(pod.volumes?.find((v) => v.name === 'grpc-tls')?.secret?.secretName, `${RELEASE}-grpc-tls`);
  }
});

/** Names of variables whose values are secrets. */
const SECRET_VARS = ['TERN_DATABASE_URL', 'TERN_NATS_URL', 'TERN_ADMIN_TOKENS', 'TERN_DKIM_KEK', 'TERN_WEBHOOKS_KEK', 'TERN_SRS_SECRETS'];

test('no secret reaches a pod as a plain env value: URLs come from secretKeyRef, tokens and keys as files', () => {
  const password = 'S3cretPassw0rd';
  const objs = render({
    postgres: { secret: { create: true, url: `postgres://tern:${password}@pg:5432/tern` } },
    nats: { secret: { create: true, url: `nats://tern:${password}@nats:4222` } },
    admin: { tokens: { create: true, tokens: `ops:${password}` } },
    srs: { domain: 'srs.example.com' },
  });
  for (const o of objs) {
    if (o.kind === 'Secret') continue;
    assert.ok(!JSON.stringify(o).includes(password), `${o.kind}/${o.metadata.name} contains the password`);
  }
  const secrets = findAll(objs, 'Secret');
  assert.ok(secrets.some((s) => s.stringData?.url?.includes(password)), 'the chart-made Secret holds it');
  for (const check of [defaults, objs]) {
    for (const { name, spec } of podSpecs(check)) {
      for (const c of spec.containers) {
        for (const e of c.env ?? []) {
          if (SECRET_VARS.includes(e.name)) {
            assert.equal(e.value, undefined, `${name}: ${e.name} is a plain value`);
            assert.ok(e.valueFrom?.secretKeyRef?.name, `${name}: ${e.name} comes from a Secret`);
          }
          assert.doesNotMatch(e.value ?? '', /:\/\/[^/\s]*:[^/\s]*@/, `${name}: ${e.name} carries credentials`);
        }
      }
    }
  }
  const policy = container(deployment(defaults, 'policy'));
  assert.deepEqual(env(policy, 'TERN_DATABASE_URL')?.valueFrom?.secretKeyRef, { name: `${RELEASE}-postgres`, key: 'url' });
  const queue = container(deployment(defaults, 'queue'));
  assert.deepEqual(env(queue, 'TERN_NATS_URL')?.valueFrom?.secretKeyRef, { name: `${RELEASE}-nats`, key: 'url' });
  const admin = container(deployment(defaults, 'admin'));
  assert.equal(env(admin, 'TERN_ADMIN_TOKENS_FILE')?.value, '/etc/tern/admin-tokens/tokens');
  assert.equal(findAll(defaults, 'Secret').length, 0, 'no Secret is made unless asked');
});

test('each service gets only the dependencies it uses, at addresses of Services the chart makes', () => {
  const wants: Record<string, string[]> = {
    ingress: ['TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR'],
    policy: ['TERN_DATABASE_URL', 'TERN_DELIVERY_ADDR'], // delivery: recipient callouts of relay domains
    queue: ['TERN_DATABASE_URL', 'TERN_NATS_URL'],
    delivery: ['TERN_NATS_URL', 'TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR'], // policy: the admin API's DKIM keys
    bounce: ['TERN_NATS_URL', 'TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR'], // policy: the suppression list feed
    webhooks: ['TERN_DATABASE_URL', 'TERN_NATS_URL'],
    admin: ['TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR', 'TERN_WEBHOOKS_ADDR'],
  };
  const deps = ['TERN_DATABASE_URL', 'TERN_NATS_URL', 'TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR', 'TERN_DELIVERY_ADDR', 'TERN_WEBHOOKS_ADDR'];
  for (const s of SERVICES) {
    const c = container(deployment(defaults, s));
    assert.deepEqual(deps.filter((d) => env(c, d)), wants[s], s);
    for (const d of ['TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR', 'TERN_DELIVERY_ADDR', 'TERN_WEBHOOKS_ADDR']) {
      const addr = env(c, d)?.value;
      if (!addr) continue;
      const m = /^([a-z0-9-]+)\.mail\.svc:(\d+)$/.exec(addr);
      assert.ok(m, `${s} ${d}=${addr}`);
      const svc = find(defaults, 'Service', m[1]!);
      assert.ok(svc.spec?.ports?.some((p) => p.port === Number(m[2]) && p.name === 'grpc'), `${addr} is a gRPC port of ${m[1]}`);
    }
  }
});

test("the DKIM key-encryption key reaches policy and delivery only, from an optional Secret; delivery may call policy", () => {
  for (const [values, name, key] of [
    [{}, `${RELEASE}-dkim-kek`, 'kek'],
    [{ dkim: { kekSecret: { name: 'my-kek', key: 'k' } } }, 'my-kek', 'k'],
  ] as const) {
    const objs = render(values);
    for (const s of SERVICES) {
      const e = env(container(deployment(objs, s)), 'TERN_DKIM_KEK');
      if (s === 'policy' || s === 'delivery') assert.deepEqual(e?.valueFrom?.secretKeyRef, { name, key, optional: true }, s);
      else assert.equal(e, undefined, `${s} has no TERN_DKIM_KEK`);
    }
  }
  assert.match(renderError({ config: { env: { TERN_DKIM_KEK: 'AAAA' } } }), /TERN_DKIM_KEK/);
  const np = find(render({ networkPolicy: { enabled: true } }), 'NetworkPolicy', `${RELEASE}-policy`);
  const from = JSON.stringify(np.spec?.ingress);
  assert.match(from, /"app.kubernetes.io\/component":"delivery"/, 'policy lets delivery in');
});

test('SRS: srs.domain gives policy TERN_SRS_DOMAIN, TERN_SRS_MAX_AGE_DAYS and TERN_SRS_SECRETS from a Secret; off, nothing of it; never a plain value', () => {
  const srsVars = (objs: K8sObject[], s: (typeof SERVICES)[number]) => (container(deployment(objs, s)).env ?? []).filter((e) => e.name.startsWith('TERN_SRS_'));
  for (const s of SERVICES) assert.deepEqual(srsVars(defaults, s), [], `${s}: SRS is off by default`);
  for (const [values, name, key, days] of [
    [{ srs: { domain: 'srs.example.com' } }, `${RELEASE}-srs`, 'secrets', '21'],
    [{ srs: { domain: 'srs.example.com', secretsSecret: { name: 'mail-srs', key: 'k' }, maxAgeDays: 30 } }, 'mail-srs', 'k', '30'],
  ] as const) {
    const objs = render(values);
    const policy = container(deployment(objs, 'policy'));
    assert.equal(env(policy, 'TERN_SRS_DOMAIN')?.value, 'srs.example.com');
    assert.equal(env(policy, 'TERN_SRS_MAX_AGE_DAYS')?.value, days);
    const secrets = env(policy, 'TERN_SRS_SECRETS');
    assert.equal(secrets?.value, undefined, 'not a plain value');
    // Not optional: SRS on without its secrets must not start; a missing Secret keeps the pod pending, naming it.
    assert.deepEqual(secrets?.valueFrom?.secretKeyRef, { name, key });
    for (const s of SERVICES.filter((x) => x !== 'policy')) assert.deepEqual(srsVars(objs, s), [], `${s} gets no SRS setting`);
    assert.equal(findAll(objs, 'Secret').length, 0, 'the chart makes no SRS Secret: it is the operator\'s');
  }
  // A secretsSecret without a domain turns nothing on.
  assert.deepEqual(srsVars(render({ srs: { secretsSecret: { name: 'mail-srs' } } }), 'policy'), []);
  for (const values of [
    { config: { env: { TERN_SRS_SECRETS: 'a-secret-of-sixteen-chars' } } },
    { policy: { env: { TERN_SRS_SECRETS: 'a-secret-of-sixteen-chars' } } },
  ]) {
    assert.match(renderError(values), /TERN_SRS_SECRETS/, JSON.stringify(values));
  }
  assert.match(renderError({ policy: { extraEnv: [{ name: 'TERN_SRS_SECRETS', value: 'a-secret-of-sixteen-chars' }] } }), /extraEnv/);
  assert.match(renderError({ srs: { domain: 'not a domain' } }), /domain/);
  assert.match(renderError({ srs: { maxAgeDays: 0 } }), /maxAgeDays/);
  assert.match(renderError({ srs: { secretsSecret: { key: '' } } }), /key/);
  assert.match(renderError({ srs: { secret: 'x' } }), /secret/, 'a misspelled key is refused');
});

test('the migrations run as a pre-install/pre-upgrade hook Job with the migrate command', () => {
  const job = find(defaults, 'Job', `${RELEASE}-migrate`);
  const hooks = (job.metadata.annotations?.['helm.sh/hook'] ?? '').split(',');
  assert.ok(hooks.includes('pre-install'), 'pre-install');
  assert.ok(hooks.includes('pre-upgrade'), 'pre-upgrade');
  assert.match(job.metadata.annotations?.['helm.sh/hook-delete-policy'] ?? '', /before-hook-creation/);
  const pod = job.spec!.template!.spec;
  assert.equal(pod.restartPolicy, 'Never');
  const c = pod.containers[0]!;
  assert.deepEqual(c.args, ['migrate']);
  assert.equal(c.image, container(deployment(defaults, 'queue')).image);
  assert.equal(env(c, 'TERN_DATABASE_URL')?.valueFrom?.secretKeyRef?.name, `${RELEASE}-postgres`);
  // A chart-made Secret must exist before the hook runs: it is a hook too, with a lower weight.
  const objs = render({ postgres: { secret: { create: true, url: 'postgres://u:p@h/db' } } });
  const secret = find(objs, 'Secret', `${RELEASE}-postgres`);
  assert.match(secret.metadata.annotations?.['helm.sh/hook'] ?? '', /pre-install/);
  assert.ok(Number(secret.metadata.annotations?.['helm.sh/hook-weight']) < Number(job.metadata.annotations?.['helm.sh/hook-weight']));
  assert.equal(findAll(render({ migrate: { enabled: false } }), 'Job').length, 0);
});

test('the SMTP LoadBalancer maps 25/587/465 to 2525/2587/2465 and keeps client addresses (externalTrafficPolicy Local)', () => {
  const svc = find(defaults, 'Service', `${RELEASE}-smtp`);
  assert.equal(svc.spec?.type, 'LoadBalancer');
  assert.equal(svc.spec?.externalTrafficPolicy, 'Local');
  const map = Object.fromEntries((svc.spec?.ports ?? []).map((p) => [p.port, p.targetPort]));
  assert.deepEqual(map, { 25: 2525, 587: 2587, 465: 2465 });
  const c = container(deployment(defaults, 'ingress'));
  for (const port of [2525, 2587, 2465]) assert.ok(c.ports?.some((p) => p.containerPort === port), `container port ${port}`);
  assert.equal(env(c, 'TERN_SMTP_LISTEN')?.value, '0.0.0.0:2525');
  assert.equal(env(c, 'TERN_SUBMISSION_LISTEN')?.value, '0.0.0.0:2587');
  assert.equal(env(c, 'TERN_SUBMISSIONS_LISTEN')?.value, '0.0.0.0:2465');
  assert.deepEqual(svc.spec?.selector, deployment(defaults, 'ingress').spec?.selector?.matchLabels);
  // No other Service is exposed outside the cluster.
  for (const other of findAll(defaults, 'Service').filter((s) => s !== svc)) {
    assert.equal(other.spec?.type, 'ClusterIP', other.metadata.name);
    // Headless: gRPC clients resolve every pod and balance calls over them.
    assert.equal(other.spec?.clusterIP, 'None', `${other.metadata.name} is headless`);
  }
});

test('without TLS only port 25 is published and the TLS listeners are off', () => {
  const objs = render({ tls: { enabled: false } });
  const svc = find(objs, 'Service', `${RELEASE}-smtp`);
  assert.deepEqual(svc.spec?.ports?.map((p) => [p.port, p.targetPort]), [[25, 2525]]);
  const c = container(deployment(objs, 'ingress'));
  assert.equal(env(c, 'TERN_SUBMISSION_LISTEN')?.value, 'off');
  assert.equal(env(c, 'TERN_TLS_CERT_FILE'), undefined);
});

test('PROXY protocol sets TERN_PROXY_PROTOCOL_CIDRS and refuses to start without the load balancer ranges', () => {
  const objs = render({ ingress: { proxyProtocol: { enabled: true, trustedCidrs: ['10.0.0.0/16', '10.1.0.0/16'] }, smtpService: { externalTrafficPolicy: 'Cluster' } } });
  const c = container(deployment(objs, 'ingress'));
  assert.equal(env(c, 'TERN_PROXY_PROTOCOL_CIDRS')?.value, '10.0.0.0/16,10.1.0.0/16');
  assert.equal(find(objs, 'Service', `${RELEASE}-smtp`).spec?.externalTrafficPolicy, 'Cluster');
  assert.equal(env(container(deployment(defaults, 'ingress')), 'TERN_PROXY_PROTOCOL_CIDRS'), undefined);
  assert.match(renderError({ ingress: { proxyProtocol: { enabled: true } } }), /trustedCidrs/);
});

test('the SMTP certificate comes from a Secret mounted as files; cert-manager can make it', () => {
  const c = container(deployment(defaults, 'ingress'));
  assert.equal(env(c, 'TERN_TLS_CERT_FILE')?.value, '/etc/tern/tls/tls.crt');
  assert.equal(env(c, 'TERN_TLS_KEY_FILE')?.value, '/etc/tern/tls/tls.key');
  const mount = c.volumeMounts?.find((m) => m.mountPath === '/etc/tern/tls');
  assert.ok(mount?.readOnly);
  const pod = deployment(defaults, 'ingress').spec!.template!.spec;
  assert.equal(pod.volumes?.find((v) => v.name === mount.name)?.secret?.secretName, `${RELEASE}-tls`);
  assert.equal(findAll(defaults, 'Certificate').length, 0);
  const objs = render({ config: { hostname: 'mx.example.com' }, tls: { certManager: { enabled: true, issuerRef: { name: 'le' } } } });
  const cert = find(objs, 'Certificate', `${RELEASE}-smtp`);
  assert.equal(cert.spec?.secretName, `${RELEASE}-tls`);
  assert.deepEqual(cert.spec?.dnsNames, ['mx.example.com']);
  assert.match(renderError({ config: { hostname: 'mx.example.com' }, tls: { certManager: { enabled: true } } }), /issuerRef\.name/);
});

test('rollouts lose nothing: shutdown grace in the env, preStop sleep, and a termination grace period covering both', () => {
  const ingress = deployment(defaults, 'ingress');
  const c = container(ingress);
  assert.equal(env(c, 'TERN_SHUTDOWN_GRACE_MS')?.value, '120000');
  assert.deepEqual(c.lifecycle?.preStop?.exec?.command, ['sleep', '15']);
  assert.ok((ingress.spec?.template?.spec.terminationGracePeriodSeconds ?? 0) >= 15 + 120);
  const delivery = deployment(defaults, 'delivery');
  assert.equal(env(container(delivery), 'TERN_SHUTDOWN_GRACE_MS')?.value, '120000');
  assert.ok((delivery.spec?.template?.spec.terminationGracePeriodSeconds ?? 0) >= 120);
  for (const s of SERVICES) {
    const d = deployment(defaults, s);
    const strategy = (d.spec as { strategy?: { rollingUpdate?: { maxUnavailable?: number } } }).strategy;
    assert.equal(strategy?.rollingUpdate?.maxUnavailable, 0, `${s}: new pods before old ones stop`);
  }
  assert.match(renderError({ ingress: { terminationGracePeriodSeconds: 30 } }), /killed mid-shutdown/);
});

test('ingress: terminationGracePeriodSeconds covers preStop + TERN_SHUTDOWN_GRACE_MS + the 5 s a process may take after its grace, with margin', () => {
  const pod = (objs: ReturnType<typeof render>) => deployment(objs, 'ingress').spec!.template!.spec;
  const grace = Number(env(container(deployment(defaults, 'ingress')), 'TERN_SHUTDOWN_GRACE_MS')?.value) / 1000;
  const preStop = Number(container(deployment(defaults, 'ingress')).lifecycle?.preStop?.exec?.command?.[1]);
  assert.ok((pod(defaults).terminationGracePeriodSeconds ?? 0) >= preStop + grace + 10);
  // preStop + grace alone leaves no time to close the sessions still open after the grace.
  assert.match(renderError({ ingress: { terminationGracePeriodSeconds: 15 + 120 } }), /preStopSleepSeconds \+ shutdown\.graceSeconds \+ 10 s of closing \(145\)/);
  assert.match(renderError({ ingress: { terminationGracePeriodSeconds: 15 + 120 + 9 } }), /killed mid-shutdown/);
  assert.equal(pod(render({ ingress: { terminationGracePeriodSeconds: 15 + 120 + 10 } })).terminationGracePeriodSeconds, 145);
  const custom = render({ ingress: { shutdown: { graceSeconds: 30, preStopSleepSeconds: 5 } } });
  assert.equal(env(container(deployment(custom, 'ingress')), 'TERN_SHUTDOWN_GRACE_MS')?.value, '30000');
  assert.equal(pod(custom).terminationGracePeriodSeconds, 5 + 30 + 15);
});

function ports(rule: { ports?: Array<{ port?: number | string }> }): Array<number | string | undefined> {
  return (rule.ports ?? []).map((p) => p.port);
}

test('NetworkPolicy: delivery reaches only SMTP ports, HTTPS for MTA-STS, DNS, NATS, the queue and policy; SMTP comes in from anywhere', () => {
  const np = find(defaults, 'NetworkPolicy', `${RELEASE}-delivery`);
  const egress = np.spec?.egress ?? [];
  const open = egress.filter((r) => !r.to);
  const reached = new Set(egress.flatMap(ports));
  assert.deepEqual([...reached].sort(), [25, 443, 4222, 465, 53, 587, 7002, 7003].sort());
  assert.equal(env(container(deployment(defaults, 'delivery')), 'TERN_MTA_STS')?.value, 'true');
  // Without MTA-STS, no HTTPS egress, and delivery is told so.
  const noSts = render({ delivery: { mtaSts: false } });
  const noStsPorts = new Set((find(noSts, 'NetworkPolicy', `${RELEASE}-delivery`).spec?.egress ?? []).flatMap(ports));
  assert.equal(noStsPorts.has(443), false);
  assert.equal(env(container(deployment(noSts, 'delivery')), 'TERN_MTA_STS')?.value, 'false');
  const queueRule = egress.find((r) => ports(r).includes(7003));
  assert.ok(queueRule?.to, 'the queue port only towards queue pods');
  assert.ok(egress.find((r) => ports(r).includes(7002))?.to, 'the policy port (DKIM keys) only towards policy pods');
  assert.ok(open.some((r) => ports(r).includes(25) && ports(r).includes(465) && ports(r).includes(587)), 'SMTP anywhere');
  assert.deepEqual(np.spec?.policyTypes, ['Ingress', 'Egress']);

  const ingress = find(defaults, 'NetworkPolicy', `${RELEASE}-ingress`);
  const smtp = ingress.spec?.ingress?.find((r) => ports(r).includes(2525));
  assert.ok(smtp, 'an SMTP rule');
  assert.equal(smtp.from, undefined, 'from anywhere');
  assert.deepEqual(ports(smtp), [2525, 2587, 2465]);

  const queue = find(defaults, 'NetworkPolicy', `${RELEASE}-queue`);
  const grpc = queue.spec?.ingress?.find((r) => ports(r).includes(7003));
  assert.equal(grpc?.from?.length, 4, 'ingress, delivery, bounce, admin');
  assert.equal(findAll(render({ networkPolicy: { enabled: false } }), 'NetworkPolicy').length, 0);
  const extra = find(render({ delivery: { networkPolicy: { extraEgressPorts: [24] } } }), 'NetworkPolicy', `${RELEASE}-delivery`);
  assert.ok(extra.spec?.egress?.flatMap(ports).includes(24));
});

test('relay recipient callouts: policy gets TERN_DELIVERY_ADDR (delivery\'s gRPC port) and the NetworkPolicies let policy, and only policy, reach delivery on 7004', () => {
  const policy = container(deployment(defaults, 'policy'));
  assert.equal(env(policy, 'TERN_DELIVERY_ADDR')?.value, `${RELEASE}-delivery.mail.svc:7004`);
  const svc = find(defaults, 'Service', `${RELEASE}-delivery`);
  assert.ok(svc.spec?.ports?.some((p) => p.name === 'grpc' && p.port === 7004), 'delivery\'s Service serves gRPC on 7004');
  for (const s of SERVICES.filter((x) => x !== 'policy')) assert.equal(env(container(deployment(defaults, s)), 'TERN_DELIVERY_ADDR'), undefined, `${s} has no TERN_DELIVERY_ADDR`);

  const selector = (s: string) => [{ podSelector: { matchLabels: deployment(defaults, s as (typeof SERVICES)[number]).spec?.selector?.matchLabels } }];
  const out = find(defaults, 'NetworkPolicy', `${RELEASE}-policy`).spec?.egress?.filter((r) => ports(r).includes(7004)) ?? [];
  assert.equal(out.length, 1, 'one policy egress rule for 7004');
  assert.deepEqual(ports(out[0]!), [7004]);
  assert.deepEqual(out[0]!.to, selector('delivery'), 'policy reaches 7004 on delivery pods only');
  const into = find(defaults, 'NetworkPolicy', `${RELEASE}-delivery`).spec?.ingress?.filter((r) => ports(r).includes(7004)) ?? [];
  assert.equal(into.length, 1, 'one delivery ingress rule for 7004');
  assert.deepEqual(into[0]!.from, selector('policy'), 'only policy calls delivery');
  for (const s of SERVICES.filter((x) => x !== 'policy')) {
    const np = find(defaults, 'NetworkPolicy', `${RELEASE}-${s}`);
    assert.ok(!np.spec?.egress?.some((r) => ports(r).includes(7004)), `${s} does not reach delivery's gRPC port`);
  }
});

test('the ServiceMonitor is behind a flag and scrapes /metrics on the metrics port every service exposes', () => {
  assert.equal(findAll(defaults, 'ServiceMonitor').length, 0);
  const objs = render({ serviceMonitor: { enabled: true, labels: { release: 'prom' } } });
  const sm = find(objs, 'ServiceMonitor', RELEASE);
  assert.equal(sm.metadata.labels?.release, 'prom');
  assert.deepEqual(sm.spec?.endpoints?.map((e) => [e.port, e.path]), [['metrics', '/metrics']]);
  const selector = sm.spec?.selector?.matchLabels ?? {};
  for (const s of SERVICES) {
    const svc = find(objs, 'Service', `${RELEASE}-${s}`);
    for (const [k, v] of Object.entries(selector)) assert.equal(svc.metadata.labels?.[k], v, `${s} Service matches the selector`);
    assert.ok(svc.spec?.ports?.some((p) => p.name === 'metrics' && p.port === PORTS[s].metrics), `${s} metrics port`);
  }
});

test('webhooks: its own Deployment, headless Service (gRPC 7006, metrics 9106) and ServiceMonitor target, Postgres and NATS from the Secrets; admin calls it', () => {
  const d = deployment(defaults, 'webhooks');
  const c = container(d);
  assert.deepEqual(c.args, ['webhooks']);
  assert.equal(d.spec?.replicas, 1);
  assert.deepEqual(
    c.ports?.map((p) => [p.name, p.containerPort]),
    [
      ['grpc', 7006],
      ['metrics', 9106],
    ],
  );
  const svc = find(defaults, 'Service', `${RELEASE}-webhooks`);
  assert.equal(svc.spec?.clusterIP, 'None');
  assert.deepEqual(svc.spec?.selector, d.spec?.selector?.matchLabels);
  assert.deepEqual(
    svc.spec?.ports?.map((p) => [p.name, p.port]),
    [
      ['grpc', 7006],
      ['metrics', 9106],
    ],
  );
  assert.deepEqual(env(c, 'TERN_DATABASE_URL')?.valueFrom?.secretKeyRef, { name: `${RELEASE}-postgres`, key: 'url' });
  assert.deepEqual(env(c, 'TERN_NATS_URL')?.valueFrom?.secretKeyRef, { name: `${RELEASE}-nats`, key: 'url' });
  assert.equal(env(container(deployment(defaults, 'admin')), 'TERN_WEBHOOKS_ADDR')?.value, `${RELEASE}-webhooks.mail.svc:7006`);
  assert.equal(env(c, 'TERN_HOSTNAME'), undefined, 'it speaks no SMTP');
  // Scaled by its own values, like the others.
  assert.equal(deployment(render({ webhooks: { replicas: 3 } }), 'webhooks').spec?.replicas, 3);
  const hpa = find(render({ webhooks: { autoscaling: { enabled: true, maxReplicas: 5 } } }), 'HorizontalPodAutoscaler', `${RELEASE}-webhooks`);
  assert.equal(hpa.spec?.maxReplicas, 5);
});

test('webhooks: the SSRF guard and https-only stay on unless the values turn them off', () => {
  const c = container(deployment(defaults, 'webhooks'));
  assert.equal(env(c, 'TERN_WEBHOOKS_ALLOW_HTTP')?.value, 'false');
  assert.equal(env(c, 'TERN_WEBHOOKS_ALLOW_PRIVATE')?.value, 'false');
  const open = container(deployment(render({ webhooks: { allowHttp: true, allowPrivate: true } }), 'webhooks'));
  assert.equal(env(open, 'TERN_WEBHOOKS_ALLOW_HTTP')?.value, 'true');
  assert.equal(env(open, 'TERN_WEBHOOKS_ALLOW_PRIVATE')?.value, 'true');
  assert.match(renderError({ webhooks: { allowHttp: 'yes' } }), /allowHttp/);
});

test('webhooks: the key-encryption key of the signing secrets reaches webhooks only, from an optional Secret, never as a plain value', () => {
  for (const [values, name, key] of [
    [{}, `${RELEASE}-webhooks-kek`, 'kek'],
    [{ webhooks: { kekSecret: { name: 'my-webhooks-kek', key: 'k' } } }, 'my-webhooks-kek', 'k'],
  ] as const) {
    const objs = render(values);
    for (const s of SERVICES) {
      const e = env(container(deployment(objs, s)), 'TERN_WEBHOOKS_KEK');
      if (s === 'webhooks') assert.deepEqual(e?.valueFrom?.secretKeyRef, { name, key, optional: true }, s);
      else assert.equal(e, undefined, `${s} has no TERN_WEBHOOKS_KEK`);
    }
  }
  assert.match(renderError({ webhooks: { env: { TERN_WEBHOOKS_KEK: 'AAAA' } } }), /TERN_WEBHOOKS_KEK/);
  assert.match(renderError({ config: { env: { TERN_WEBHOOKS_KEK: 'AAAA' } } }), /TERN_WEBHOOKS_KEK/);
});

test('NetworkPolicy: webhooks reaches HTTPS anywhere (and the extra ports or rules given), DNS, Postgres and NATS; only admin calls it; admin may reach it', () => {
  const np = find(defaults, 'NetworkPolicy', `${RELEASE}-webhooks`);
  const egress = np.spec?.egress ?? [];
  assert.deepEqual([...new Set(egress.flatMap(ports))].sort(), [443, 4222, 5432, 53].sort());
  const https = egress.find((r) => ports(r).includes(443));
  assert.equal(https?.to, undefined, 'receivers may be anywhere');
  assert.deepEqual(ports(https!), [443], 'HTTPS alone in that rule');
  const grpc = np.spec?.ingress?.filter((r) => ports(r).includes(7006)) ?? [];
  assert.equal(grpc.length, 1);
  assert.deepEqual(grpc[0]!.from, [{ podSelector: { matchLabels: deployment(defaults, 'admin').spec?.selector?.matchLabels } }], 'only admin calls webhooks');
  assert.ok(np.spec?.ingress?.some((r) => ports(r).includes(9106)), 'metrics are scraped');
  assert.equal(np.spec?.ingress?.length, 2, 'metrics and admin only');

  const admin = find(defaults, 'NetworkPolicy', `${RELEASE}-admin`);
  const toWebhooks = admin.spec?.egress?.find((r) => ports(r).includes(7006));
  assert.deepEqual(toWebhooks?.to, [{ podSelector: { matchLabels: deployment(defaults, 'webhooks').spec?.selector?.matchLabels } }]);
  for (const s of SERVICES.filter((x) => x !== 'admin')) {
    const other = find(defaults, 'NetworkPolicy', `${RELEASE}-${s}`);
    assert.ok(!other.spec?.egress?.some((r) => ports(r).includes(7006)), `${s} does not reach webhooks`);
  }

  const rule = { to: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'apps' } } }], ports: [{ protocol: 'TCP', port: 8080 }] };
  const extra = find(render({ webhooks: { networkPolicy: { extraEgressPorts: [8443], extraEgress: [rule] } } }), 'NetworkPolicy', `${RELEASE}-webhooks`);
  const open = extra.spec?.egress?.find((r) => ports(r).includes(443));
  assert.deepEqual(ports(open!), [443, 8443], 'extra ports beside 443, anywhere');
  assert.ok(extra.spec?.egress?.some((r) => isDeepStrictEqual(r, rule)), 'the extra rule as given');
  const delivery = find(render({ webhooks: { networkPolicy: { extraEgress: [rule] } } }), 'NetworkPolicy', `${RELEASE}-delivery`);
  assert.ok(!delivery.spec?.egress?.some((r) => ports(r).includes(8080)), 'webhooks.networkPolicy.extraEgress is for webhooks only');
});

test('webhooks: a PodDisruptionBudget that lets its single pod be evicted (a drain must not block on it)', () => {
  const pdb = find(defaults, 'PodDisruptionBudget', `${RELEASE}-webhooks`);
  assert.equal(deployment(defaults, 'webhooks').spec?.replicas, 1);
  assert.equal(pdb.spec?.maxUnavailable, 1);
  assert.equal(pdb.spec?.minAvailable, undefined, 'minAvailable 1 with one replica would refuse every eviction');
  assert.deepEqual(pdb.spec?.selector?.matchLabels, deployment(defaults, 'webhooks').spec?.selector?.matchLabels);
});

test('webhooks.enabled false: no webhooks object at all, admin gets no TERN_WEBHOOKS_ADDR and no egress to it, alerts and certificate names leave it out', () => {
  const objs = render({
    webhooks: { enabled: false },
    serviceMonitor: { enabled: true },
    prometheusRule: { enabled: true },
    grpcTls: { enabled: true, certManager: { enabled: true, issuerRef: { name: 'ca' } } },
  });
  const named = objs.filter((o) => o.metadata.name.includes('webhooks') || o.metadata.labels?.['app.kubernetes.io/component'] === 'webhooks');
  assert.deepEqual(named.map((o) => `${o.kind}/${o.metadata.name}`), []);
  assert.equal(findAll(objs, 'Deployment').length, SERVICES.length - 1);
  const admin = container(deployment(objs, 'admin'));
  assert.equal(env(admin, 'TERN_WEBHOOKS_ADDR'), undefined);
  assert.ok(!find(objs, 'NetworkPolicy', `${RELEASE}-admin`).spec?.egress?.some((r) => ports(r).includes(7006)));
  assert.ok(!JSON.stringify(objs).includes('webhooks'), 'nothing rendered mentions webhooks');
  // The migrations still create its schema, so turning it on later needs nothing more.
  assert.deepEqual(find(objs, 'Job', `${RELEASE}-migrate`).spec?.template?.spec.containers[0]?.args, ['migrate']);
  // On (the default): the certificate names it, as admin's calls to it go through those names.
  const on = find(render({ grpcTls: { enabled: true, certManager: { enabled: true, issuerRef: { name: 'ca' } } } }), 'Certificate', `${RELEASE}-grpc`);
  assert.ok(on.spec?.dnsNames?.includes(`${RELEASE}-webhooks.mail.svc`), JSON.stringify(on.spec?.dnsNames));
  assert.equal(on.spec?.dnsNames?.length, SERVICES.length * 3);
});

test('the merge escape hatch deep-merges into a Deployment without disturbing the rest', () => {
  const objs = render({ queue: { merge: { spec: { template: { metadata: { annotations: { 'example.com/x': 'y' } } } } } } });
  const d = deployment(objs, 'queue');
  assert.equal(d.spec?.template?.metadata.annotations?.['example.com/x'], 'y');
  assert.deepEqual(container(d).args, ['queue']);
});
