// The address spans header rewriting replaces (header-rewrite.ts): only the
// addresses of From/Sender/Reply-To/To/Cc, wherever RFC 5322 puts them, and
// nothing of display names, comments, groups or other fields.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AddressRole } from '@tern/proto';
import { headerAddressSpans } from '../src/header-rewrite';

const addresses = (head: string) => headerAddressSpans(head).map((s) => [head.slice(s.start, s.end), s.role]);
const S = AddressRole.ADDRESS_ROLE_SENDER;
const R = AddressRole.ADDRESS_ROLE_RECIPIENT;

test('finds angle and bare addresses, in lists, groups and folded lines, with their role', () => {
  const head = [
    'From: "Doe, John (sales)" <john@a.test>',
    'To: a@b.test, "x@y" <c@d.test> (comment, with@at),',
    '\tUndisclosed: e@f.test, G <g@h.test>;',
    'Cc: (lead) i@j.test',
    'Reply-To: <k@l.test>',
    'Subject: from m@n.test',
    'Received: from x by y for <o@p.test>',
    'Resent-To: q@r.test',
    '',
  ].join('\r\n');
  assert.deepEqual(addresses(head), [
    ['john@a.test', S],
    ['a@b.test', R],
    ['c@d.test', R],
    ['e@f.test', R],
    ['g@h.test', R],
    ['i@j.test', R],
    ['k@l.test', S],
  ]);
});

test('leaves source routes and quoted local parts alone', () => {
  assert.deepEqual(addresses('To: <@relay.test:u@v.test>, "a b"@c.test\r\n'), []);
});
