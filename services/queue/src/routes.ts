// The route table (next hop per recipient domain), owned by the queue and
// sent with every delivery job. Cached in memory, reloaded every few seconds
// so a change made through any replica is picked up by all.
import type { Pool } from '@tern/db';
import { matchRoute, Route, RouteKind, TlsPolicy } from '@tern/proto';
import { errorMessage, repeatEvery, type Repeating } from '@tern/runtime';
import type { Logger } from '@tern/telemetry';

export interface RouteRow {
  domain: string;
  kind: number;
  target: string;
  tls: number;
  auth_user: string;
  auth_secret: string;
}

export function rowToRoute(r: RouteRow): Route {
  return Route.fromPartial({ domain: r.domain, kind: r.kind, target: r.target, tls: r.tls, authUser: r.auth_user, authSecret: r.auth_secret });
}

export class RouteTable {
  private routes = new Map<string, Route>();
  private reloads: Repeating | undefined;

  constructor(
    private readonly pool: Pool,
    private readonly logger: Logger,
    private readonly reloadMs = 5_000,
  ) {}

  async load(): Promise<void> {
    const { rows } = await this.pool.query<RouteRow>('SELECT domain, kind, target, tls, auth_user, auth_secret FROM routes');
    this.routes = new Map(rows.map((r) => [r.domain, rowToRoute(r)]));
  }

  start(): void {
    this.reloads = repeatEvery(this.reloadMs, () => this.load(), (err) => this.logger.warn({ err: errorMessage(err) }, 'route reload failed; keeping the previous table'));
  }

  stop(): void {
    this.reloads?.stop();
  }

  /** The route of a destination: exact domain, then a parent ".example.com" entry, then "*". */
  match(destination: string): Route | undefined {
    return matchRoute(this.routes, destination);
  }

  list(): Route[] {
    return [...this.routes.values()].sort((a, b) => a.domain.localeCompare(b.domain));
  }
}

/** Validates a route from an operator; the error names the field. */
export function validateRoute(route: Route | undefined): string | undefined {
  if (!route) return 'route: required';
  const domain = route.domain.trim().toLowerCase();
  if (!domain) return 'route.domain: required (a domain, ".parent.domain" or "*")';
  if (domain !== '*' && !/^\.?(?=.{1,253}$)([a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?$/.test(domain)) {
    return `route.domain: "${route.domain}" is not a domain, ".parent.domain" or "*"`;
  }
  if (!Object.values(RouteKind).includes(route.kind) || route.kind === RouteKind.ROUTE_KIND_UNSPECIFIED) {
    return 'route.kind: must be MX, SMARTHOST or LMTP';
  }
  if (!Object.values(TlsPolicy).includes(route.tls)) return 'route.tls: unknown TLS policy';
  if (route.kind === RouteKind.ROUTE_KIND_MX) {
    if (route.target) return 'route.target: must be empty for an MX route';
  } else {
    const t = route.target.trim();
    if (!t) return 'route.target: required for SMARTHOST and LMTP ("host:port" or, for LMTP, "unix:/path")';
    const unix = /^unix:\/.+/.test(t);
    if (unix && route.kind !== RouteKind.ROUTE_KIND_LMTP) return 'route.target: "unix:" targets are only for LMTP';
    if (!unix) {
      const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d+)$/.exec(t);
      const lmtp = route.kind === RouteKind.ROUTE_KIND_LMTP;
      if (!m) return `route.target: "${t}" is not host:port (e.g. smtp.example.com:587, [2001:db8::1]:25${lmtp ? ', or unix:/absolute/path' : ''})`;
      if (Number(m[2]) < 1 || Number(m[2]) > 65535) return `route.target: port ${m[2]} of "${t}" is out of range (1-65535)`;
    }
  }
  if (route.authUser && !route.authSecret) return 'route.auth_secret: required with auth_user (the name of the secret holding the password)';
  if (route.authSecret && !route.authUser) return 'route.auth_user: required with auth_secret';
  if (route.authSecret && !/^[A-Za-z0-9._/-]{1,253}$/.test(route.authSecret)) {
    return 'route.auth_secret: must be the name of a secret (letters, digits, ".", "_", "-", "/"), never the password itself';
  }
  return undefined;
}
