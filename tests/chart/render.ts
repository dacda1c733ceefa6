// Renders charts/tern with `helm template` and parses the objects, for the
// chart tests. Helm comes from TERN_HELM, .tern/bin (scripts/install-helm.sh) or PATH;
// without it every test fails and says how to install it. Every render names
// its Kubernetes version (`--kube-version`, the newest in kube-versions.json
// unless a test asks for another): a helm's built-in default (v1.20 for one
// built without its version flags) must not decide what the tests see.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';

export const ROOT = path.resolve(__dirname, '../..');
export const CHART = path.join(ROOT, 'charts/tern');
export const RELEASE = 'tern';
export const NAMESPACE = 'mail';
/** The oldest and newest Kubernetes releases the chart is rendered for ("1.27.16"). */
export const KUBE_VERSIONS = JSON.parse(fs.readFileSync(path.join(__dirname, 'kube-versions.json'), 'utf8')) as { oldest: string; newest: string };

export interface Meta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean } };
}
export interface Probe {
  grpc?: { port: number; service?: string };
  httpGet?: { path: string; port: string | number };
  periodSeconds?: number;
}
export interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  readOnlyRootFilesystem?: boolean;
  allowPrivilegeEscalation?: boolean;
  privileged?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
}
export interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: EnvVar[];
  ports?: Array<{ name: string; containerPort: number }>;
  securityContext?: SecurityContext;
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}
export interface PodSpec {
  containers: Container[];
  securityContext?: SecurityContext;
  automountServiceAccountToken?: boolean;
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  restartPolicy?: string;
  volumes?: Array<{ name: string; secret?: { secretName: string }; emptyDir?: object }>;
}
export interface PodTemplate {
  metadata: { labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: PodSpec;
}
export interface ServicePort {
  name: string;
  port: number;
  targetPort: number | string;
}
export interface NetworkPolicyRule {
  ports?: Array<{ protocol?: string; port?: number | string }>;
  from?: object[];
  to?: object[];
}
export interface MetricSpec {
  type: string;
  resource?: { name: string; target: { averageUtilization?: number } };
  pods?: { metric: { name: string }; target: { averageValue?: string } };
  external?: { metric: { name: string; selector?: { matchLabels?: Record<string, string> } }; target: { averageValue?: string } };
}
/** The fields of the kinds the chart renders that the tests read. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: Meta;
  automountServiceAccountToken?: boolean;
  stringData?: Record<string, string>;
  data?: Record<string, string>;
  spec?: {
    replicas?: number;
    selector?: { matchLabels?: Record<string, string> } & Record<string, unknown>;
    template?: PodTemplate;
    type?: string;
    clusterIP?: string;
    externalTrafficPolicy?: string;
    ports?: ServicePort[];
    maxUnavailable?: number | string;
    minAvailable?: number | string;
    scaleTargetRef?: { kind: string; name: string };
    minReplicas?: number;
    maxReplicas?: number;
    metrics?: MetricSpec[];
    minReplicaCount?: number;
    maxReplicaCount?: number;
    triggers?: Array<{ type: string; metadata: Record<string, string> }>;
    podSelector?: { matchLabels?: Record<string, string> };
    policyTypes?: string[];
    ingress?: NetworkPolicyRule[];
    egress?: NetworkPolicyRule[];
    endpoints?: Array<{ port: string; path: string }>;
    secretName?: string;
    dnsNames?: string[];
  };
}

/** The Deployments of the default values (webhooks is on unless `webhooks.enabled: false`). */
export const SERVICES = ['ingress', 'policy', 'queue', 'delivery', 'bounce', 'webhooks', 'admin'] as const;
export type ServiceName = (typeof SERVICES)[number];
/** Ports from ARCHITECTURE.md. */
export const PORTS: Record<ServiceName, { grpc: number; metrics: number }> = {
  admin: { grpc: 7000, metrics: 9100 },
  ingress: { grpc: 7001, metrics: 9101 },
  policy: { grpc: 7002, metrics: 9102 },
  queue: { grpc: 7003, metrics: 9103 },
  delivery: { grpc: 7004, metrics: 9104 },
  bounce: { grpc: 7005, metrics: 9105 },
  webhooks: { grpc: 7006, metrics: 9106 },
};

let helmPath: string | undefined;
export function helm(): string {
  if (helmPath) return helmPath;
  if (process.env.TERN_HELM) return (helmPath = process.env.TERN_HELM);
  const local = path.join(ROOT, '.tern/bin/helm');
  if (fs.existsSync(local)) return (helmPath = local);
  const which = spawnSync('sh', ['-c', 'command -v helm'], { encoding: 'utf8' });
  if (which.status === 0 && which.stdout.trim()) return (helmPath = which.stdout.trim());
  throw new Error('helm is not installed: run `bash scripts/install-helm.sh` (it puts helm in .tern/bin), then run the chart tests again');
}

function valuesArgs(values: object | undefined, files: string[]): { args: string[]; cleanup: () => void } {
  const args: string[] = [];
  for (const f of files) args.push('-f', path.resolve(ROOT, f));
  if (!values) return { args, cleanup: () => undefined };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-chart-'));
  const file = path.join(dir, 'values.json'); // JSON is YAML
  fs.writeFileSync(file, JSON.stringify(values));
  args.push('-f', file);
  return { args, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export interface RenderOptions {
  files?: string[];
  /** `--kube-version`; default KUBE_VERSIONS.newest. */
  kubeVersion?: string;
}

function templateArgs(args: string[], opts: RenderOptions): string[] {
  return ['template', RELEASE, CHART, '--namespace', NAMESPACE, '--kube-version', opts.kubeVersion ?? KUBE_VERSIONS.newest, ...args];
}

/** `helm template` with the given values; throws with helm's message on failure. */
export function render(values?: object, opts: RenderOptions = {}): K8sObject[] {
  const { args, cleanup } = valuesArgs(values, opts.files ?? []);
  try {
    const out = execFileSync(helm(), templateArgs(args, opts), {
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return parseAllDocuments(out)
      .map((d) => d.toJSON() as K8sObject | null)
      .filter((o): o is K8sObject => o !== null);
  } finally {
    cleanup();
  }
}

/** Runs `helm template` expecting failure; returns helm's error output. */
export function renderError(values: object, opts: RenderOptions = {}): string {
  const { args, cleanup } = valuesArgs(values, opts.files ?? []);
  try {
    const r = spawnSync(helm(), templateArgs(args, opts), { encoding: 'utf8' });
    if (r.error) throw r.error;
    if (r.status === 0) throw new Error(`helm template succeeded, but these values should have been refused: ${JSON.stringify(values)}`);
    return r.stderr;
  } finally {
    cleanup();
  }
}

export function find(objs: K8sObject[], kind: string, name: string): K8sObject {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} among: ${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
}

export function findAll(objs: K8sObject[], kind: string): K8sObject[] {
  return objs.filter((x) => x.kind === kind);
}

export function deployment(objs: K8sObject[], service: ServiceName): K8sObject {
  return find(objs, 'Deployment', `${RELEASE}-${service}`);
}

export function container(d: K8sObject): Container {
  const c = d.spec?.template?.spec.containers[0];
  if (!c) throw new Error(`${d.kind} ${d.metadata.name} has no container`);
  return c;
}

export function env(c: Container, name: string): EnvVar | undefined {
  return c.env?.find((e) => e.name === name);
}
