// DecisionCache.key (services/ingress/src/policy-check.ts): two requests share a
// key exactly when they differ at most in the session's id and client port.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CheckRequest, CheckResponse, CheckStage, Listener, PolicyAction, SessionInfo } from '@tern/proto';
import { DecisionCache } from '../src/policy-check';

const base = (): CheckRequest =>
  CheckRequest.fromPartial({
    stage: CheckStage.CHECK_STAGE_RCPT,
    session: {
      sessionId: 's1',
      clientAddress: '192.0.2.1',
      clientPort: 40000,
      clientName: 'client.example',
      heloName: 'helo.example',
      listener: Listener.LISTENER_MX,
      tls: { used: true, version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', verified: false },
      authUser: '',
      serverName: 'mx.example',
    },
    sender: 'a@example.org',
    recipient: 'b@example.net',
    recipients: ['c@example.net'],
    declaredSize: 1000,
    smtputf8: false,
  });

/** A different value of the same type. */
function other(v: unknown): unknown {
  if (typeof v === 'string') return v + 'x';
  if (typeof v === 'number') return v + 1;
  if (typeof v === 'boolean') return !v;
  if (Array.isArray(v)) return [...v, 'extra@example.net'];
  throw new Error(`no other value for ${JSON.stringify(v)}`);
}

describe('DecisionCache.key', () => {
  it('ignores only the session id and the client port', () => {
    const r = base();
    assert.equal(DecisionCache.key({ ...r, session: { ...r.session!, sessionId: 's2', clientPort: 50000 } }), DecisionCache.key(r));
  });

  it('changes with every other field of the request, the session and its TLS (a field added to the contract and not to the key fails here)', () => {
    const r = base();
    const k = DecisionCache.key(r);
    const fields = Object.keys(CheckRequest.fromPartial({})).filter((f) => f !== 'session');
    assert.ok(fields.length >= 6);
    for (const f of fields) {
      const changed = { ...r, [f]: other((r as unknown as Record<string, unknown>)[f]) } as CheckRequest;
      assert.notEqual(DecisionCache.key(changed), k, `request.${f}`);
    }
    const sessionFields = Object.keys(SessionInfo.fromPartial({})).filter((f) => f !== 'tls' && f !== 'sessionId' && f !== 'clientPort');
    for (const f of sessionFields) {
      const session = { ...r.session!, [f]: other((r.session as unknown as Record<string, unknown>)[f]) } as SessionInfo;
      assert.notEqual(DecisionCache.key({ ...r, session }), k, `session.${f}`);
    }
    const tls = r.session!.tls!;
    for (const f of Object.keys(tls)) {
      const session = { ...r.session!, tls: { ...tls, [f]: other((tls as unknown as Record<string, unknown>)[f]) } } as SessionInfo;
      assert.notEqual(DecisionCache.key({ ...r, session }), k, `session.tls.${f}`);
    }
    assert.notEqual(DecisionCache.key({ ...r, session: { ...r.session!, tls: undefined } }), k, 'no TLS');
    assert.notEqual(DecisionCache.key({ ...r, session: undefined }), k, 'no session');
  });

  it('keeps what set() was given for cache_ms, and only accepts', () => {
    const cache = new DecisionCache();
    const k = DecisionCache.key(base());
    cache.set(k, CheckResponse.fromPartial({ action: PolicyAction.POLICY_ACTION_ACCEPT, cacheMs: 1000 }), 0);
    assert.ok(cache.get(k, 500));
    assert.equal(cache.get(k, 1000), undefined);
    cache.set(k, CheckResponse.fromPartial({ action: PolicyAction.POLICY_ACTION_REJECT, cacheMs: 1000 }), 0);
    assert.equal(cache.get(k, 500), undefined);
  });
});
