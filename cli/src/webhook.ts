// `tern webhook ...`: webhook endpoints through the admin API (the webhooks
// service owns them). `add` prints the signing secret, which no call returns
// again.
import type { Command } from '@commander-js/extra-typings';
import {
  CreateWebhookEndpointResponse,
  GetWebhookEndpointResponse,
  ListWebhookDeliveriesResponse,
  ListWebhookEndpointsResponse,
  ResumeWebhookEndpointResponse,
  type WebhookDelivery,
  WebhookDeliveryState,
  type WebhookEndpoint,
  WebhookEndpointState,
} from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT } from './errors';
import { enumName, json, table } from './format';
import { UsageError } from './requests';

interface WebhookCtx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
  io: { now(): Date; stderr: NodeJS.WritableStream };
}

type Run = <A extends unknown[]>(fn: (ctx: WebhookCtx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const stateName = (s: WebhookEndpointState) => enumName(WebhookEndpointState, 'WEBHOOK_ENDPOINT_STATE_', s);
const deliveryStateName = (s: WebhookDeliveryState) => enumName(WebhookDeliveryState, 'WEBHOOK_DELIVERY_STATE_', s);
const DELIVERY_STATES = ['pending', 'delivered', 'dropped'] as const;

const time = (d: Date | undefined) => (d ? d.toISOString().replace(/\.\d+Z$/, 'Z') : '-');

function eventsOf(value: string | undefined): string[] {
  if (value === undefined) return [];
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

export function formatEndpoints(eps: WebhookEndpoint[]): string {
  if (!eps.length) return 'No webhook endpoints.\n';
  return table(
    ['ID', 'URL', 'EVENTS', 'BATCH', 'STATE', 'PENDING', 'FAILURES', 'REASON'],
    eps.map((e) => [
      e.id,
      e.url,
      e.eventTypes.length ? e.eventTypes.join(',') : 'all',
      e.batch ? 'yes' : 'no',
      stateName(e.state),
      String(e.pendingDeliveries),
      String(e.consecutiveFailures),
      e.suspendedReason || '-',
    ]),
  );
}

export function formatEndpoint(e: WebhookEndpoint): string {
  const lines = [
    ['ID', e.id],
    ['URL', e.url],
    ['Description', e.description || '-'],
    ['Events', e.eventTypes.length ? e.eventTypes.join(', ') : 'all'],
    ['Batch', e.batch ? 'yes (JSON arrays)' : 'no'],
    ['State', stateName(e.state) + (e.suspendedReason ? ` since ${time(e.suspendedAt)}: ${e.suspendedReason}` : '')],
    ['Pending', String(e.pendingDeliveries)],
    ['Failures in a row', String(e.consecutiveFailures)],
    ['Last success', time(e.lastSuccessAt)],
    ['Last error', e.lastError || '-'],
    ['Created', `${time(e.createdAt)} by ${e.createdBy || '-'}`],
  ];
  return lines.map(([k, v]) => `${`${k}:`.padEnd(19)}${v}\n`).join('');
}

export function formatDeliveries(ds: WebhookDelivery[], next: string): string {
  if (!ds.length) return 'No deliveries.\n';
  const rows = table(
    ['EVENT ID', 'TYPE', 'QUEUE ID', 'STATE', 'ATTEMPTS', 'CREATED', 'NEXT/FINISHED', 'LAST'],
    ds.map((d) => [
      d.eventId,
      d.eventType,
      d.queueId || '-',
      deliveryStateName(d.state) + (d.droppedReason ? ` (${d.droppedReason})` : ''),
      String(d.attempts),
      time(d.createdAt),
      time(d.state === WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_PENDING ? d.nextAttemptAt : d.finishedAt),
      d.lastError || (d.lastStatus ? `HTTP ${d.lastStatus}` : '-'),
    ]),
  );
  return next ? `${rows}More: --page-token ${next}\n` : rows;
}

export function registerWebhookCommands(program: Command, run: Run): void {
  const webhook = program
    .command('webhook')
    .description('webhook endpoints: lifecycle events (received, deferred, delivered, bounced, ...) POSTed signed (Standard Webhooks) to an HTTPS URL');

  webhook
    .command('add')
    .description('register an endpoint; prints its signing secret, shown this once only')
    .argument('<url>', 'https:// URL of the receiver')
    .option('--events <types>', 'comma-separated event types it gets (received, deferred, delivered, relayed, bounced, expired, held, released, deleted, suppressed); default all')
    .option('--description <text>', 'what it is for')
    .option('--batch', 'the receiver accepts a JSON array of events in one request')
    .action(
      run(async (ctx, url: string, o: { events?: string; description?: string; batch?: boolean }) => {
        const res = await ctx.api.createWebhookEndpoint({ url, eventTypes: eventsOf(o.events), description: o.description ?? '', batch: Boolean(o.batch) });
        if (ctx.json) {
          ctx.out(json(CreateWebhookEndpointResponse.toJSON(res)));
        } else {
          const e = res.endpoint!;
          ctx.out(`Webhook endpoint ${e.id} for ${e.url} (events: ${e.eventTypes.length ? e.eventTypes.join(', ') : 'all'}${e.batch ? ', batches' : ''}).\n`);
          ctx.out(`Signing secret: ${res.secret}\n`);
        }
        ctx.io.stderr.write('tern: store the signing secret now: it is not shown again (to change it, remove the endpoint and add it again).\n');
      }),
    );

  webhook
    .command('ls')
    .alias('list')
    .description('endpoints with their state (active, suspended and why), pending deliveries and failures in a row')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listWebhookEndpoints({});
        ctx.out(ctx.json ? json(ListWebhookEndpointsResponse.toJSON(res)) : formatEndpoints(res.endpoints));
      }),
    );

  webhook
    .command('show')
    .description('one endpoint in full')
    .argument('<id>', 'endpoint id (wh_..., from tern webhook ls)')
    .action(
      run(async (ctx, id: string) => {
        const res = await ctx.api.getWebhookEndpoint({ id });
        ctx.out(ctx.json ? json(GetWebhookEndpointResponse.toJSON(res)) : formatEndpoint(res.endpoint!));
      }),
    );

  webhook
    .command('rm')
    .alias('remove')
    .description('remove an endpoint and its pending deliveries')
    .argument('<id>', 'endpoint id')
    .action(
      run(async (ctx, id: string) => {
        const res = await ctx.api.deleteWebhookEndpoint({ id });
        if (ctx.json) ctx.out(json({ deleted: res.deleted }));
        else if (res.deleted) ctx.out(`Removed webhook endpoint ${id}.\n`);
        if (!res.deleted) throw new CliError(`no webhook endpoint ${id}: nothing removed`, EXIT.NOT_FOUND);
      }),
    );

  webhook
    .command('resume')
    .description('make a suspended endpoint active again: its failures are forgotten and its pending deliveries sent at once')
    .argument('<id>', 'endpoint id')
    .action(
      run(async (ctx, id: string) => {
        const res = await ctx.api.resumeWebhookEndpoint({ id });
        ctx.out(ctx.json ? json(ResumeWebhookEndpointResponse.toJSON(res)) : `Resumed webhook endpoint ${id} (${res.endpoint?.pendingDeliveries ?? 0} pending).\n`);
      }),
    );

  webhook
    .command('deliveries')
    .description("an endpoint's deliveries, newest first: state, attempts, next attempt or when finished, last error")
    .argument('<id>', 'endpoint id')
    .option('--state <state>', `only ${DELIVERY_STATES.join(', ')}`)
    .option('--limit <n>', 'page size (1-1000)', '50')
    .option('--page-token <token>', 'the next (older) page: the token a previous page printed')
    .action(
      run(async (ctx, id: string, o: { state?: string; limit?: string; pageToken?: string }) => {
        let state = WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_UNSPECIFIED;
        if (o.state !== undefined) {
          const i = (DELIVERY_STATES as readonly string[]).indexOf(o.state);
          if (i < 0) throw new UsageError(`--state: "${o.state}" is not one of ${DELIVERY_STATES.join(', ')}`);
          state = i + 1;
        }
        const limit = Number(o.limit ?? '50');
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new UsageError(`--limit: "${o.limit}" is not a whole number from 1 to 1000`);
        const res = await ctx.api.listWebhookDeliveries({ endpointId: id, state, limit, pageToken: o.pageToken ?? '' });
        ctx.out(ctx.json ? json(ListWebhookDeliveriesResponse.toJSON(res)) : formatDeliveries(res.deliveries, res.nextPageToken));
      }),
    );
}
