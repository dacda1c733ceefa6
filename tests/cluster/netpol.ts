// The chart's NetworkPolicies judged against the connections the platform
// really made. The local cluster's CNI (bridge) does not enforce
// NetworkPolicy, so a policy that blocks what Tern needs would pass every
// other test here and break on a cluster that enforces it. The node's
// conntrack sees every new connection between pods, and from pods to the
// host; each one that involves a Tern pod is checked against the policies
// with the semantics of the Kubernetes API (networking.k8s.io/v1).
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import type { Kube } from './kube';

export interface Flow {
  proto: 'tcp' | 'udp';
  src: string;
  /** After Service NAT: the pod (or host address) that answered. */
  dst: string;
  dport: number;
}

interface Selector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }[];
}
interface Peer {
  podSelector?: Selector;
  namespaceSelector?: Selector;
  ipBlock?: { cidr: string; except?: string[] };
}
interface PolicyPort {
  protocol?: string;
  port?: number | string;
  endPort?: number;
}
interface Rule {
  ports?: PolicyPort[];
  to?: Peer[];
  from?: Peer[];
}
export interface NetworkPolicy {
  metadata: { name: string; namespace: string };
  spec: { podSelector: Selector; policyTypes?: string[]; ingress?: Rule[]; egress?: Rule[] };
}
export interface PodInfo {
  name: string;
  namespace: string;
  labels: Record<string, string>;
  /** Named container ports (for policies that name a port). */
  ports: Record<string, number>;
}

/** Records every new connection (conntrack events) in the cluster's range, and which pod held each address. */
export class FlowRecorder {
  readonly flows = new Map<string, Flow>();
  readonly pods = new Map<string, PodInfo>();
  private child?: ChildProcess;
  private timer?: NodeJS.Timeout;

  constructor(private readonly kube: Kube) {}

  async start(): Promise<void> {
    this.child = spawn('conntrack', ['-E', '-e', 'NEW'], { stdio: ['ignore', 'pipe', 'inherit'] });
    readline.createInterface({ input: this.child.stdout! }).on('line', (line) => this.parse(line));
    await this.learnPods();
    this.timer = setInterval(() => void this.learnPods().catch(() => undefined), 2000);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.child?.kill();
    await this.learnPods();
  }

  private parse(line: string): void {
    // [NEW] tcp 6 120 SYN_SENT src=A dst=B sport=x dport=y [UNREPLIED] src=C dst=A sport=z dport=x
    const m = /^\s*\[NEW\] (tcp|udp)\s.*?src=(\S+) dst=(\S+) sport=\d+ dport=(\d+).*?src=(\S+) dst=\S+ sport=(\d+)/.exec(line);
    if (!m) return;
    const [, proto, src, , , replySrc, replySport] = m;
    if (!src!.startsWith('198.1') || !replySrc!.startsWith('198.1')) return;
    const flow: Flow = { proto: proto as Flow['proto'], src: src!, dst: replySrc!, dport: Number(replySport) };
    this.flows.set(`${flow.proto} ${flow.src} ${flow.dst}:${flow.dport}`, flow);
  }

  private async learnPods(): Promise<void> {
    type PodJson = { metadata: { name: string; namespace: string; labels?: Record<string, string> }; spec: { containers: { ports?: { name?: string; containerPort: number }[] }[] }; status: { podIP?: string } };
    const list = await this.kube.json<{ items: PodJson[] }>('get', 'pods', '-A');
    for (const p of list.items) {
      if (!p.status.podIP) continue;
      const ports: Record<string, number> = {};
      for (const c of p.spec.containers) for (const port of c.ports ?? []) if (port.name) ports[port.name] = port.containerPort;
      this.pods.set(p.status.podIP, { name: p.metadata.name, namespace: p.metadata.namespace, labels: p.metadata.labels ?? {}, ports });
    }
  }
}

function selects(sel: Selector | undefined, labels: Record<string, string>): boolean {
  if (!sel) return true;
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const has = e.key in labels;
    const ok =
      e.operator === 'In' ? has && (e.values ?? []).includes(labels[e.key]!) :
      e.operator === 'NotIn' ? !has || !(e.values ?? []).includes(labels[e.key]!) :
      e.operator === 'Exists' ? has : !has;
    if (!ok) return false;
  }
  return true;
}

function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0);
}
function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  const size = 2 ** (32 - Number(bits ?? 32));
  const start = Math.floor(ipToInt(base!) / size) * size;
  return ipToInt(ip) >= start && ipToInt(ip) < start + size;
}

export interface Verdict {
  flow: Flow;
  from: string;
  to: string;
  /** Why it is refused; undefined when allowed. */
  refused?: string;
}

/**
 * Judges each flow with the NetworkPolicy API's rules: a pod selected by a
 * policy of a direction is isolated in it, and then only what some rule of
 * those policies admits (ports and peers) may pass; both the sender's egress
 * and the receiver's ingress must admit a connection. Connections from the
 * node to a pod (kubelet probes, this test's scrapes) are not judged, as
 * CNIs let the node reach its pods; the SMTP ports are, as client traffic.
 */
export function judge(flows: Iterable<Flow>, pods: Map<string, PodInfo>, namespaces: Map<string, Record<string, string>>, policies: NetworkPolicy[], opts: { namespace: string; nodeAddresses: string[]; clientPorts: number[] }): Verdict[] {
  const name = (ip: string) => {
    const p = pods.get(ip);
    return p ? `${p.namespace}/${p.name}` : ip;
  };
  const peerMatches = (peer: Peer, policyNs: string, ip: string): boolean => {
    if (peer.ipBlock) return inCidr(ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((c) => inCidr(ip, c));
    const pod = pods.get(ip);
    if (!pod) return false;
    if (peer.namespaceSelector) {
      if (!selects(peer.namespaceSelector, namespaces.get(pod.namespace) ?? {})) return false;
    } else if (pod.namespace !== policyNs) {
      return false;
    }
    return selects(peer.podSelector, pod.labels);
  };
  const portMatches = (ports: PolicyPort[] | undefined, flow: Flow, dstPod: PodInfo | undefined): boolean =>
    !ports?.length ||
    ports.some((p) => {
      if ((p.protocol ?? 'TCP').toLowerCase() !== flow.proto) return false;
      if (p.port === undefined) return true;
      const port = typeof p.port === 'number' ? p.port : dstPod?.ports[p.port];
      return port !== undefined && (p.endPort ? flow.dport >= port && flow.dport <= p.endPort : flow.dport === port);
    });
  const direction = (pod: PodInfo, dir: 'Ingress' | 'Egress') =>
    policies.filter(
      (pol) =>
        pol.metadata.namespace === pod.namespace &&
        selects(pol.spec.podSelector, pod.labels) &&
        (pol.spec.policyTypes ?? (dir === 'Ingress' ? ['Ingress'] : pol.spec.egress ? ['Egress'] : [])).includes(dir),
    );

  const verdicts: Verdict[] = [];
  for (const flow of flows) {
    const srcPod = pods.get(flow.src);
    const dstPod = pods.get(flow.dst);
    if (srcPod?.namespace !== opts.namespace && dstPod?.namespace !== opts.namespace) continue;
    const fromNode = opts.nodeAddresses.includes(flow.src);
    if (fromNode && !opts.clientPorts.includes(flow.dport)) continue;
    const v: Verdict = { flow, from: name(flow.src), to: `${name(flow.dst)}:${flow.dport}/${flow.proto}` };
    if (srcPod) {
      const egress = direction(srcPod, 'Egress');
      if (egress.length && !egress.some((pol) => (pol.spec.egress ?? []).some((r) => portMatches(r.ports, flow, dstPod) && (!r.to?.length || r.to.some((peer) => peerMatches(peer, pol.metadata.namespace, flow.dst)))))) {
        v.refused = `no egress rule of ${egress.map((p) => p.metadata.name).join(', ')} admits it`;
      }
    }
    if (dstPod && !v.refused) {
      const ingress = direction(dstPod, 'Ingress');
      if (ingress.length && !ingress.some((pol) => (pol.spec.ingress ?? []).some((r) => portMatches(r.ports, flow, dstPod) && (!r.from?.length || r.from.some((peer) => peerMatches(peer, pol.metadata.namespace, flow.src)))))) {
        v.refused = `no ingress rule of ${ingress.map((p) => p.metadata.name).join(', ')} admits it`;
      }
    }
    verdicts.push(v);
  }
  return verdicts;
}
