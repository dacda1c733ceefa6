// The SMTP certificate's expiry on /metrics (issue 23): the notAfter of the
// certificate in use, and of the new one after cert-manager renews the files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createTelemetry } from '@tern/telemetry';
import { TlsContextManager } from '../src/tls';

function certificate(dir: string, name: string, days: number): { cert: string; key: string } {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', String(days), '-subj', '/CN=mx.test'], { stdio: 'ignore' });
  return { cert, key };
}

const notAfter = (file: string) => Date.parse(new crypto.X509Certificate(fs.readFileSync(file)).validTo) / 1000;

test('tern_ingress_tls_certificate_expiry_timestamp_seconds is the notAfter of the certificate in use, and follows a reload', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-ingress-tls-'));
  const telemetry = createTelemetry({ service: 'ingress-tls-test', logLevel: 'silent' });
  const server = await telemetry.serveMetrics('127.0.0.1', 0, () => true);
  try {
    const soon = certificate(dir, 'soon', 10);
    const later = certificate(dir, 'later', 90);
    const live = { cert: path.join(dir, 'tls.crt'), key: path.join(dir, 'tls.key') };
    fs.copyFileSync(soon.cert, live.cert);
    fs.copyFileSync(soon.key, live.key);
    const tls = new TlsContextManager(live.cert, live.key, telemetry.logger);
    tls.observe(telemetry.meter);
    const expiry = async () => {
      const text = await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`)).text();
      const m = /^tern_ingress_tls_certificate_expiry_timestamp_seconds(?:\{[^}]*\})? (\S+)$/m.exec(text);
      assert.ok(m, 'the gauge is exposed');
      return Number(m[1]);
    };
    const first = await expiry();
    assert.equal(first, notAfter(soon.cert));
    const days = (first - Date.now() / 1000) / 86400;
    assert.ok(days > 9 && days <= 10, `expires in ${days.toFixed(2)} days`);

    // Renewed in place, as cert-manager does.
    fs.copyFileSync(later.cert, live.cert);
    fs.copyFileSync(later.key, live.key);
    const renewed = new Date(Date.now() + 5_000); // a new stamp even within the same millisecond
    fs.utimesSync(live.cert, renewed, renewed);
    assert.equal(tls.reloadIfChanged(), true);
    assert.equal(await expiry(), notAfter(later.cert));
    assert.ok(notAfter(later.cert) > first + 79 * 86400);
  } finally {
    server.close();
    await telemetry.shutdown();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
