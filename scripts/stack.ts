// The local platform behind `npm start` (run by scripts/start.sh after
// provisioning, build and migrations): every service as its own process, a
// demo DNS server that sends every domain under `.test` to a demo SMTP sink,
// and one demo message through it all. Runs until Ctrl-C.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { Harness, startPlatform, repoRoot } from '@tern/devkit';

const DNS_PORT = Number(process.env.TERN_DEMO_DNS_PORT ?? 5353);
const SINK_PORT = Number(process.env.TERN_DEMO_SINK_PORT ?? 2526);
const SMTP_PORT = Number(process.env.TERN_DEMO_SMTP_PORT ?? 2525);

/**
 * OTEL_EXPORTER_OTLP_ENDPOINT, checked: the OTLP/HTTP base URL every service
 * exports its traces to (each appends /v1/traces), e.g. Jaeger all-in-one's
 * http://127.0.0.1:4318; unset or empty: no export.
 */
function otlpEndpoint(value: string | undefined): string | undefined {
  if (!value) return undefined;
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    // reported below
  }
  if (url?.protocol !== 'http:' && url?.protocol !== 'https:') {
    throw new Error(`OTEL_EXPORTER_OTLP_ENDPOINT: "${value}" is not an http(s) URL; give the OTLP/HTTP base URL of a collector, e.g. http://127.0.0.1:4318 (Jaeger all-in-one), or unset it`);
  }
  return value;
}

function adminToken(file: string): string {
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const token = crypto.randomBytes(24).toString('base64url');
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return token;
}

/** The local key-encryption key of DKIM keys made with `tern dkim generate` (a Secret in the chart). */
function dkimKek(file: string): string {
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const kek = crypto.randomBytes(32).toString('base64');
  fs.writeFileSync(file, `${kek}\n`, { mode: 0o600 });
  return kek;
}

async function main(): Promise<void> {
  const root = repoRoot();
  const databaseUrl = process.env.TERN_DATABASE_URL;
  const natsUrl = process.env.TERN_NATS_URL;
  if (!databaseUrl || !natsUrl) throw new Error('TERN_DATABASE_URL and TERN_NATS_URL must be set (scripts/start.sh sets them)');
  const traces = otlpEndpoint(process.env.OTEL_EXPORTER_OTLP_ENDPOINT);
  const sinkDir = path.join(root, '.tern', 'sink');
  fs.mkdirSync(sinkDir, { recursive: true });

  const harness = new Harness({ name: 'local' });
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write('\nstopping the platform...\n');
    await harness.close().catch((err: Error) => process.stderr.write(`${err.message}\n`));
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));

  try {
    const dns = await harness.startDns({ host: '127.0.0.1', port: DNS_PORT });
    dns.mailSuffix('test', { address: '127.0.0.1' });
    const sink = await harness.startSink({ host: '127.0.0.1', port: SINK_PORT, hostname: 'mx.sink.test', dir: sinkDir });
    const token = adminToken(path.join(root, '.tern', 'admin-token'));
    const kek = dkimKek(path.join(root, '.tern', 'dkim-kek'));
    const platform = await startPlatform(harness, {
      databaseUrl,
      natsUrl,
      dnsServer: dns.address,
      remoteSmtpPort: SINK_PORT,
      smtpPort: SMTP_PORT,
      adminToken: token,
      standardPorts: true,
      hostname: 'mx.tern.test',
      // The harness gives services none of this process's environment: passed on by name.
      otlpEndpoint: traces,
      env: { policy: { TERN_DKIM_KEK: kek }, delivery: { TERN_DKIM_KEK: kek } },
    });

    process.stdout.write(
      [
        '',
        'Tern is running:',
        `  SMTP (MX)        ${platform.smtpHost}:${platform.smtpPort}`,
        `  admin API        ${platform.adminAddr}   (token in .tern/admin-token)`,
        `  demo DNS         ${dns.address}   (every domain under .test -> the demo sink)`,
        `  demo sink        ${sink.address}   (messages in .tern/sink/)`,
        `  logs             ${harness.logDir}/`,
        `  traces           ${traces ? `${traces} (OTLP/HTTP)` : 'not exported (set OTEL_EXPORTER_OTLP_ENDPOINT, docs/operating.md "Seeing a trace")'}`,
        '',
        'Sending a demo message...',
        '',
      ].join('\n'),
    );

    const transport = nodemailer.createTransport({ host: platform.smtpHost, port: platform.smtpPort, secure: false, ignoreTLS: true, name: 'demo.local' });
    const info = await transport.sendMail({
      envelope: { from: 'you@sender.test', to: ['someone@example.test'] },
      raw: `From: you@sender.test\r\nTo: someone@example.test\r\nSubject: Hello from Tern\r\nMessage-ID: <demo-${Date.now()}@sender.test>\r\n\r\nThis message went through ingress, policy, queue and delivery.\r\n`,
    });
    const queueId = /queued as (\S+)/.exec(info.response)?.[1] ?? '?';
    process.stdout.write(`  ${info.response}\n`);
    const before = sink.messages.length;
    const [delivered] = await sink.waitForMessages(before + 1, 20_000).then((all) => all.slice(before));
    process.stdout.write(`  delivered to the demo sink: ${delivered?.file ? path.relative(root, delivered.file) : '(in memory)'}\n`);
    process.stdout.write(
      [
        '',
        'Try it:',
        `  npx tern message show ${queueId}`,
        '  npx tern queue ls',
        `  swaks --server 127.0.0.1:${platform.smtpPort} --from you@sender.test --to friend@example.test`,
        `  swaks --server 127.0.0.1:${platform.smtpPort} --from you@sender.test --to permfail@example.test   # bounces; the report lands in .tern/sink/`,
        '',
        'Ctrl-C stops everything.',
        '',
      ].join('\n'),
    );
  } catch (err) {
    process.stderr.write(`npm start failed: ${(err as Error).message}\n`);
    await stop(1);
  }
}

main().catch((err: Error) => {
  process.stderr.write(`npm start failed: ${err.message}\n`);
  process.exit(1);
});
