/* global process, console */
// Writes charts/tern/values.schema.json: the strict JSON Schema (draft-07, so
// every Helm 3 release applies it) that makes a misspelled or misplaced value
// fail `helm install/upgrade/template/lint`. Objects of our own shape have
// additionalProperties: false; pass-through Kubernetes objects (affinity,
// tolerations, peers...) are left to the API server's own validation.
//
//   node tests/chart/tools/values-schema.mjs          # write the file
//   node tests/chart/tools/values-schema.mjs --check  # fail if it is stale
import fs from 'node:fs';
import path from 'node:path';

const out = path.resolve(import.meta.dirname, '../../../charts/tern/values.schema.json');

// ---- building blocks -------------------------------------------------------
const str = (extra = {}) => ({ type: 'string', ...extra });
const bool = () => ({ type: 'boolean' });
const int = (minimum = 0, extra = {}) => ({ type: 'integer', minimum, ...extra });
const port = () => int(1, { maximum: 65535 });
const nullable = (schema) => ({ ...schema, type: [schema.type, 'null'] });
/** An object of our own: every key known, nothing else accepted. */
const obj = (properties, extra = {}) => ({ type: 'object', additionalProperties: false, properties, ...extra });
/** A Kubernetes object passed through as is (validated by the API server). */
const k8s = (description) => ({ type: 'object', description });
const list = (items, extra = {}) => ({ type: 'array', items, ...extra });
const stringMap = () => ({ type: 'object', additionalProperties: { type: 'string' } });
const quantity = () => ({ type: ['string', 'number'] });
const intOrPercent = () => ({ anyOf: [{ type: 'integer', minimum: 0 }, { type: 'string', pattern: '^[0-9]+%$' }] });
const cidr = () => str({ pattern: '^[0-9a-fA-F:.]+/[0-9]{1,3}$' });

// Names of variables whose values are secrets: never plain values (invariant
// I5). A *_FILE variable names a file, which is fine. (Written without
// look-ahead: Go's regexp, which Helm validates with, has none.)
const SECRET_NAMES = [
  '^TERN_(DATABASE|NATS)_URL$',
  '^TERN_DKIM_KEK$',
  '^TERN_WEBHOOKS_KEK$',
  '^TERN_SRS_SECRETS$',
  '(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL)([A-Za-z0-9_]*([^E]|[^L]E|[^I]LE|[^F]ILE|[^_]FILE))?$',
];
const secretName = { anyOf: SECRET_NAMES.map((pattern) => ({ pattern })) };
const envName = { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' };
/** NAME: value pairs for plain settings; secret-looking names are refused. */
const plainEnv = () => ({
  type: 'object',
  propertyNames: envName,
  patternProperties: Object.fromEntries(
    SECRET_NAMES.map((p) => [p, { not: {}, description: 'a secret: put it in a Secret and use extraEnv with valueFrom' }]),
  ),
  additionalProperties: { type: ['string', 'number', 'boolean'] },
});
/** Kubernetes EnvVar objects; a secret-looking name must use valueFrom. */
const extraEnv = () =>
  list({
    type: 'object',
    required: ['name'],
    additionalProperties: false,
    properties: { name: envName, value: str(), valueFrom: k8s('EnvVarSource') },
    if: { required: ['value'] },
    then: { properties: { name: { not: secretName } } },
  });

const resources = () =>
  obj({
    requests: { type: 'object', additionalProperties: quantity() },
    limits: { type: 'object', additionalProperties: quantity() },
    claims: list(k8s('ResourceClaim')),
  });

const issuerRef = () => obj({ name: str(), kind: str({ enum: ['Issuer', 'ClusterIssuer'] }), group: str() });

const secretRef = (what) =>
  obj(
    {
      name: str({ description: `Secret with the ${what} URL` }),
      key: str({ minLength: 1 }),
      create: bool(),
      url: str(),
    },
    {
      if: { properties: { create: { const: true } }, required: ['create'] },
      then: { properties: { url: str({ minLength: 1 }) } },
    },
  );

const pdb = () =>
  obj({
    enabled: bool(),
    maxUnavailable: intOrPercent(),
    minAvailable: { anyOf: [{ type: 'null' }, ...intOrPercent().anyOf] },
  });

/** Keys every service has. */
function component({ autoscaling = {}, extra = {} }) {
  return obj({
    replicas: int(0),
    resources: resources(),
    shutdown: obj({ graceSeconds: int(1), preStopSleepSeconds: int(0) }, { required: ['graceSeconds', 'preStopSleepSeconds'] }),
    terminationGracePeriodSeconds: nullable(int(1)),
    logLevel: str({ enum: ['', 'trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] }),
    autoscaling: obj({
      enabled: bool(),
      minReplicas: int(1),
      maxReplicas: int(1),
      targetCPUUtilizationPercentage: nullable(int(1, { maximum: 1000 })),
      behavior: k8s('HorizontalPodAutoscalerBehavior'),
      ...autoscaling,
    }),
    pdb: pdb(),
    env: plainEnv(),
    extraEnv: extraEnv(),
    extraVolumes: list(k8s('Volume')),
    extraVolumeMounts: list(k8s('VolumeMount')),
    podAnnotations: stringMap(),
    podLabels: stringMap(),
    nodeSelector: stringMap(),
    tolerations: list(k8s('Toleration')),
    affinity: k8s('Affinity'),
    topologySpreadConstraints: list(k8s('TopologySpreadConstraint')),
    priorityClassName: str(),
    merge: k8s('deep-merged into the Deployment'),
    ...extra,
  });
}

const peers = () => list(k8s('NetworkPolicyPeer'));

const schema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'Values of the Tern chart',
  description: 'Generated by tests/chart/tools/values-schema.mjs; documented in values.yaml and README.md.',
  ...obj({
    nameOverride: str(),
    fullnameOverride: str(),
    global: obj({ labels: stringMap(), annotations: stringMap() }),
    image: obj({
      repository: str({ minLength: 1 }),
      tag: str(),
      digest: str({ pattern: '^$|^sha256:[0-9a-f]{64}$' }),
      pullPolicy: str({ enum: ['Always', 'IfNotPresent', 'Never'] }),
      pullSecrets: list(str({ minLength: 1 })),
    }),
    config: obj({
      hostname: str({ pattern: '^$|^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$' }),
      logLevel: str({ enum: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] }),
      otlpEndpoint: str({ pattern: '^$|^https?://' }),
      env: plainEnv(),
    }),
    postgres: obj({ secret: secretRef('postgres://') }),
    nats: obj({ secret: secretRef('nats://') }),
    dkim: obj({ kekSecret: obj({ name: str({ description: 'Secret with the DKIM key-encryption key' }), key: str({ minLength: 1 }) }) }),
    srs: obj({
      domain: str({ pattern: '^$|^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$' }),
      secretsSecret: obj({ name: str({ description: 'Secret with the SRS secrets, comma-separated' }), key: str({ minLength: 1 }) }),
      maxAgeDays: int(1),
    }),
    tls: obj({
      enabled: bool(),
      secretName: str(),
      certManager: obj({
        enabled: bool(),
        dnsNames: list(str({ minLength: 1 })),
        issuerRef: issuerRef(),
        duration: str(),
        renewBefore: str(),
      }),
    }),
    grpcTls: obj({
      enabled: bool(),
      secretName: str(),
      certManager: obj({ enabled: bool(), issuerRef: issuerRef() }),
    }),
    serviceAccount: obj({ create: bool(), name: str(), annotations: stringMap() }),
    podSecurityContext: k8s('PodSecurityContext'),
    containerSecurityContext: k8s('SecurityContext'),
    networkPolicy: obj({
      enabled: bool(),
      dns: obj({ to: peers() }),
      postgres: obj({ port: port(), to: peers() }),
      nats: obj({ port: port(), to: peers() }),
      metricsFrom: peers(),
      adminFrom: peers(),
      extraEgress: list(k8s('NetworkPolicyEgressRule')),
    }),
    serviceMonitor: obj({
      enabled: bool(),
      interval: str({ pattern: '^[0-9]+(ms|s|m|h)$' }),
      scrapeTimeout: str({ pattern: '^$|^[0-9]+(ms|s|m|h)$' }),
      labels: stringMap(),
    }),
    dashboards: obj({
      enabled: bool(),
      label: str({ minLength: 1 }),
      labelValue: str(),
      labels: stringMap(),
      annotations: stringMap(),
      namespace: str(),
    }),
    prometheusRule: obj({
      enabled: bool(),
      labels: stringMap(),
      alertLabels: stringMap(),
      runbookBaseUrl: str({ minLength: 1 }),
      thresholds: obj({
        queueGrowth: int(1),
        queueGrowingWindow: str({ pattern: '^[0-9]+(s|m|h|d)$' }),
        oldestDeferredSeconds: int(1),
        deferralRatio: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
        bounceRatio: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
        ratioMinResults: int(1),
        stalledFor: str({ pattern: '^[0-9]+(s|m|h|d)$' }),
        highWaterRatio: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
        outboxOldestSeconds: int(1),
        natsConsumerPending: int(1),
        eventLoopDelaySeconds: { type: 'number', exclusiveMinimum: 0 },
        serviceDownFor: str({ pattern: '^[0-9]+(s|m|h|d)$' }),
        tlsCertificateExpiryDays: int(1),
      }),
    }),
    migrate: obj({
      enabled: bool(),
      backoffLimit: int(0),
      activeDeadlineSeconds: int(1),
      resources: resources(),
      podAnnotations: stringMap(),
      nodeSelector: stringMap(),
      tolerations: list(k8s('Toleration')),
    }),
    ingress: component({
      autoscaling: {
        connections: obj({ enabled: bool(), metricName: str({ minLength: 1 }), averageValue: quantity() }),
      },
      extra: {
        smtpService: obj({
          type: str({ enum: ['LoadBalancer', 'NodePort', 'ClusterIP'] }),
          externalTrafficPolicy: str({ enum: ['Local', 'Cluster'] }),
          annotations: stringMap(),
          loadBalancerClass: str(),
          loadBalancerSourceRanges: list(cidr()),
          ports: obj({ smtp: port(), submission: port(), submissions: port() }),
        }),
        proxyProtocol: obj(
          { enabled: bool(), trustedCidrs: list(cidr()) },
          {
            if: { properties: { enabled: { const: true } }, required: ['enabled'] },
            then: { properties: { trustedCidrs: { minItems: 1 } } },
          },
        ),
      },
    }),
    policy: component({}),
    queue: component({}),
    delivery: component({
      autoscaling: {
        keda: obj({
          enabled: bool(),
          natsServerMonitoringEndpoint: str({ minLength: 1 }),
          account: str({ minLength: 1 }),
          stream: str({ minLength: 1 }),
          consumer: str({ minLength: 1 }),
          lagThreshold: { type: ['string', 'integer'] },
          activationLagThreshold: { type: ['string', 'integer'] },
          useHttps: bool(),
          pollingInterval: int(1),
          cooldownPeriod: int(0),
        }),
        queueDepth: obj({
          enabled: bool(),
          metricName: str({ minLength: 1 }),
          selector: stringMap(),
          averageValue: quantity(),
        }),
      },
      extra: { mtaSts: bool(), networkPolicy: obj({ extraEgressPorts: list(port()) }) },
    }),
    bounce: component({}),
    webhooks: component({
      extra: {
        enabled: bool(),
        kekSecret: obj({ name: str({ description: 'Secret with the webhooks key-encryption key' }), key: str({ minLength: 1 }) }),
        allowHttp: bool(),
        allowPrivate: bool(),
        networkPolicy: obj({ extraEgressPorts: list(port()), extraEgress: list(k8s('NetworkPolicyEgressRule')) }),
      },
    }),
    admin: component({
      extra: {
        tokens: obj(
          { secretName: str(), key: str({ minLength: 1 }), create: bool(), tokens: str() },
          {
            if: { properties: { create: { const: true } }, required: ['create'] },
            then: { properties: { tokens: str({ minLength: 1 }) } },
          },
        ),
        certAuth: bool(),
      },
    }),
    extraObjects: list({ type: ['object', 'string'] }),
  }),
};

const text = JSON.stringify(schema, null, 2) + '\n';
if (process.argv.includes('--check')) {
  const current = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
  if (current !== text) {
    console.error(`values-schema: ${path.relative(process.cwd(), out)} is stale; run: node tests/chart/tools/values-schema.mjs`);
    process.exit(1);
  }
  console.log('values-schema: up to date');
} else {
  fs.writeFileSync(out, text);
  console.log(`values-schema: wrote ${path.relative(process.cwd(), out)}`);
}
