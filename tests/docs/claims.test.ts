// Issue 26 item 12: claims in the operator documentation checked against
// what the code does (the rendered chart, the services' configuration, the
// admin API contract), so that a change to one without the other fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { find, RELEASE, render, ROOT } from '../chart/render';

const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8');

/** Sentences (a table row counts as one line of sentences) of a Markdown file, unwrapped. */
function sentences(markdown: string): string[] {
  return markdown
    .split(/\n\s*\n|\n(?=\|)/)
    .map((block) => block.replace(/\s*\n\s*/g, ' '))
    .flatMap((block) => block.split(/(?<=\.)\s+(?=[A-Z`])|\s\|\s/));
}

test('the chart README names every port delivery may reach anywhere on the internet by default', () => {
  const np = find(render(), 'NetworkPolicy', `${RELEASE}-delivery`);
  // Rules without `to` are open to any address; DNS and NATS (open unless
  // networkPolicy.dns.to / nats.to are set) are described on their own.
  const values = parse(read('charts/tern/values.yaml')) as { networkPolicy: { nats: { port: number } } };
  const open = new Set((np.spec?.egress ?? []).filter((r) => !r.to).flatMap((r) => (r.ports ?? []).map((p) => Number(p.port))));
  open.delete(53);
  open.delete(values.networkPolicy.nats.port);
  assert.ok(open.has(25) && open.has(443), `the default policy opens SMTP and, for MTA-STS, HTTPS: ${[...open].join(', ')}`);
  // Every statement of the form "delivery ... 25, 465 and 587" lists them all.
  const claims = sentences(read('charts/tern/README.md')).filter((s) => /\bdelivery\b/.test(s) && /\b25, 465\b/.test(s));
  assert.ok(claims.length >= 2, 'the README states delivery\'s egress ports (security section and networkPolicy values)');
  for (const claim of claims) {
    const named = new Set([...claim.matchAll(/\b\d{2,4}\b/g)].map((m) => Number(m[0])));
    const missing = [...open].filter((p) => !named.has(p));
    assert.deepEqual(missing, [], `"${claim.trim()}" leaves out ${missing.join(', ')}`);
  }
});

test('operating.md says where DKIM keys come from: TERN_DKIM_KEYS files (no admin API for them)', () => {
  const dns = read('docs/operating.md').split(/^## /m).find((s) => s.startsWith('5. DNS records'));
  assert.ok(dns, 'operating.md has its section 5, DNS records');
  const row = dns.split('\n').find((l) => l.includes('_domainkey'));
  assert.ok(row, 'section 5 lists the DKIM record');
  // What the code reads: delivery's configuration, and the admin API's contract.
  assert.match(read('services/delivery/src/config.ts'), /TERN_DKIM_KEYS/);
  const adminHasDkim = /dkim/i.test(read('proto/tern/v1/admin.proto'));
  assert.match(row, /TERN_DKIM_KEYS/, 'the row names the variable whose files hold the keys');
  if (!adminHasDkim) assert.doesNotMatch(row, /managed through the admin API|CLI: the DKIM commands/, 'the admin API has no DKIM keys');
});
