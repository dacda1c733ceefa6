// The milter definitions (policy.milters): the content filters ingress runs
// at the end of data. Policy only keeps them (validated, audited); ingress
// reads them with ListMilters every few seconds and speaks the protocol.
import net from 'node:net';
import { withTransaction, type Pool } from '@tern/db';
import { Listener, MilterDefaultAction, type Milter } from '@tern/proto';
import { invalid } from './errors';

export const MILTER_DEFAULTS = { connectTimeoutMs: 10_000, commandTimeoutMs: 30_000, totalTimeoutMs: 300_000 };
/** No single wait longer than ten minutes: a stuck filter must not hold a message (and its client) for longer. */
const MAX_TIMEOUT_MS = 600_000;

const LISTENER_NAMES = new Map<Listener, string>([
  [Listener.LISTENER_MX, 'mx'],
  [Listener.LISTENER_SUBMISSION, 'submission'],
  [Listener.LISTENER_SUBMISSIONS, 'submissions'],
]);
const LISTENER_OF = new Map([...LISTENER_NAMES].map(([k, v]) => [v, k]));
const ACTION_NAMES = new Map<MilterDefaultAction, string>([
  [MilterDefaultAction.MILTER_DEFAULT_ACTION_UNSPECIFIED, 'tempfail'],
  [MilterDefaultAction.MILTER_DEFAULT_ACTION_TEMPFAIL, 'tempfail'],
  [MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT, 'accept'],
  [MilterDefaultAction.MILTER_DEFAULT_ACTION_REJECT, 'reject'],
]);
const ACTION_OF: Record<string, MilterDefaultAction> = {
  tempfail: MilterDefaultAction.MILTER_DEFAULT_ACTION_TEMPFAIL,
  accept: MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT,
  reject: MilterDefaultAction.MILTER_DEFAULT_ACTION_REJECT,
};

export interface MilterRow {
  name: string;
  address: string;
  listeners: string[];
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  totalTimeoutMs: number;
  defaultAction: string;
  position: number;
}

const COLS =
  'name, address, listeners, connect_timeout_ms AS "connectTimeoutMs", command_timeout_ms AS "commandTimeoutMs", total_timeout_ms AS "totalTimeoutMs", default_action AS "defaultAction", position';

export const milterName = (field: string, value: string): string => {
  const name = value.trim().toLowerCase();
  if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(name)) throw invalid(field, `"${value}" is not a milter name (1-64 of a-z, 0-9, '.', '_', '-'; e.g. rspamd)`);
  return name;
};

/** "host:port", "[v6]:port" or "unix:/absolute/path". */
export function milterAddress(field: string, value: string): string {
  const v = value.trim();
  if (v.startsWith('unix:')) {
    const p = v.slice(5);
    if (!p.startsWith('/') || p.length > 107 || p.includes('\0')) throw invalid(field, `"${value}": a unix socket is unix:/absolute/path (at most 107 characters)`);
    return v;
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(v);
  const port = Number(m?.[3]);
  const host = m?.[1] ?? m?.[2] ?? '';
  const hostOk = m?.[1] ? net.isIPv6(host) : /^[A-Za-z0-9._-]{1,253}$/.test(host);
  if (!m || !hostOk || !(port >= 1 && port <= 65535)) {
    throw invalid(field, `"${value}" is not host:port (e.g. 127.0.0.1:11332, [::1]:11332) or unix:/path/to/socket`);
  }
  return v;
}

function timeout(field: string, value: number, fallback: number): number {
  if (!value) return fallback;
  if (!Number.isInteger(value) || value > MAX_TIMEOUT_MS) throw invalid(field, `${value}: milliseconds, 1 to ${MAX_TIMEOUT_MS} (0 = default ${fallback})`);
  return value;
}

export function validateMilter(m: Milter | undefined): MilterRow {
  if (!m) throw invalid('milter', 'required');
  const listeners: string[] = [];
  for (const l of m.listeners) {
    const name = LISTENER_NAMES.get(l);
    if (!name) throw invalid('milter.listeners', `${l} is not a listener (mx, submission, submissions)`);
    if (!listeners.includes(name)) listeners.push(name);
  }
  if (!listeners.length) throw invalid('milter.listeners', 'at least one of mx, submission, submissions');
  const defaultAction = ACTION_NAMES.get(m.defaultAction);
  if (!defaultAction) throw invalid('milter.default_action', `${m.defaultAction} is not tempfail, accept or reject`);
  const row: MilterRow = {
    name: milterName('milter.name', m.name),
    address: milterAddress('milter.address', m.address),
    listeners,
    connectTimeoutMs: timeout('milter.connect_timeout_ms', m.connectTimeoutMs, MILTER_DEFAULTS.connectTimeoutMs),
    commandTimeoutMs: timeout('milter.command_timeout_ms', m.commandTimeoutMs, MILTER_DEFAULTS.commandTimeoutMs),
    totalTimeoutMs: timeout('milter.total_timeout_ms', m.totalTimeoutMs, MILTER_DEFAULTS.totalTimeoutMs),
    defaultAction,
    position: m.order,
  };
  if (row.totalTimeoutMs < row.commandTimeoutMs) {
    throw invalid('milter.total_timeout_ms', `${row.totalTimeoutMs} is less than command_timeout_ms ${row.commandTimeoutMs}; the whole conversation needs at least one answer's time`);
  }
  return row;
}

export function toMilter(r: MilterRow): Milter {
  return {
    name: r.name,
    address: r.address,
    listeners: r.listeners.map((l) => LISTENER_OF.get(l) ?? Listener.LISTENER_UNSPECIFIED),
    connectTimeoutMs: r.connectTimeoutMs,
    commandTimeoutMs: r.commandTimeoutMs,
    totalTimeoutMs: r.totalTimeoutMs,
    defaultAction: ACTION_OF[r.defaultAction] ?? MilterDefaultAction.MILTER_DEFAULT_ACTION_TEMPFAIL,
    order: r.position,
  };
}

export class MilterStore {
  constructor(private readonly pool: Pool) {}

  /** In chain order. */
  async list(): Promise<MilterRow[]> {
    return (await this.pool.query<MilterRow>(`SELECT ${COLS} FROM policy.milters ORDER BY position, name`)).rows;
  }

  async put(m: MilterRow, operator: string): Promise<MilterRow> {
    return withTransaction(this.pool, async (c) => {
      const row = await c.query<MilterRow>(
        `INSERT INTO policy.milters (name, address, listeners, connect_timeout_ms, command_timeout_ms, total_timeout_ms, default_action, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, listeners = EXCLUDED.listeners,
           connect_timeout_ms = EXCLUDED.connect_timeout_ms, command_timeout_ms = EXCLUDED.command_timeout_ms,
           total_timeout_ms = EXCLUDED.total_timeout_ms, default_action = EXCLUDED.default_action,
           position = EXCLUDED.position, updated_at = now()
         RETURNING ${COLS}`,
        [m.name, m.address, m.listeners, m.connectTimeoutMs, m.commandTimeoutMs, m.totalTimeoutMs, m.defaultAction, m.position],
      );
      await c.query('INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, $3, $4, $5)', [operator, 'put', 'milter', m.name, JSON.stringify(m)]);
      return row.rows[0] as MilterRow;
    });
  }

  async delete(name: string, operator: string): Promise<boolean> {
    return withTransaction(this.pool, async (c) => {
      const res = await c.query('DELETE FROM policy.milters WHERE name = $1', [name]);
      if (res.rowCount) await c.query('INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, $3, $4, $5)', [operator, 'delete', 'milter', name, '{}']);
      return (res.rowCount ?? 0) > 0;
    });
  }
}
