// The DKIM keys managed through the admin API: asked of policy
// (GetDkimSigningKeys, sealed) every TERN_DKIM_REFRESH_MS, opened with
// TERN_DKIM_KEK and handed to the signer, so that a key generated, rotated or
// retired signs (or stops) within seconds on every delivery pod. A poll, not
// a watch: any policy replica answers, and a missed change is caught by the
// next poll.
import { KekError, unseal } from '@tern/config';
import { grpc, isGrpcError, unary } from '@tern/grpc';
import { DkimAlgorithm, type DkimSigningKey, type PolicyServiceClient } from '@tern/proto';
import { untraced, type Logger } from '@tern/telemetry';
import { dkimPrivateKey, type DkimKey, type DkimSigner } from './dkim';
import { errorMessage } from '@tern/runtime';

/** Must match policy's (services/policy/src/dkim-keys.ts sealLabel). */
const sealLabel = (domain: string, selector: string) => `dkim:${domain}:${selector}`;

export interface DkimRefreshOptions {
  policy: Pick<PolicyServiceClient, 'getDkimSigningKeys'>;
  kek: Buffer | undefined;
  signer: DkimSigner;
  intervalMs: number;
  deadlineMs: number;
  logger: Logger;
}

/** A key the API lists that this pod cannot use: stops the start, and is logged (the previous key kept) later. */
export class DkimKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DkimKeyError';
  }
}

export class DkimRefresh {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private fingerprint = '';
  /** The keys in use by domain/algorithm, so a key that does not open leaves the previous one in place. */
  private current = new Map<string, DkimKey>();
  private failing = false;
  private lastProblems = '';
  /** True once the keys were loaded at least once. */
  loaded = false;

  constructor(private readonly o: DkimRefreshOptions) {}

  /**
   * Loads the keys before the first job (a message must not leave unsigned
   * because policy was slow to answer): asked again every interval until
   * policy answers. A key that does not open with TERN_DKIM_KEK throws (the
   * process must not start).
   */
  async start(): Promise<void> {
    for (;;) {
      try {
        await this.refresh(true);
        break;
      } catch (err) {
        if (err instanceof DkimKeyError || this.stopped) throw err;
        this.o.logger.warn({ err: errorMessage(err), retry_ms: this.o.intervalMs }, 'DKIM keys not loaded from policy yet; no job is taken until they are');
        await new Promise((r) => setTimeout(r, this.o.intervalMs));
        if (this.stopped) throw new Error('stopped before the DKIM keys were loaded', { cause: err });
      }
    }
    const tick = () => {
      this.timer = setTimeout(() => {
        this.refresh(false)
          .then(() => {
            if (this.failing) this.o.logger.info('DKIM keys loaded from policy again');
            this.failing = false;
          })
          .catch((err: Error) => {
            // Keep signing with the keys we have; say so once per outage.
            if (!this.failing) this.o.logger.warn({ err: err.message }, 'DKIM keys not refreshed from policy; signing with the keys loaded before');
            this.failing = true;
          })
          .finally(() => !this.stopped && tick());
      }, this.o.intervalMs);
      this.timer.unref();
    };
    tick();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async refresh(atStart: boolean): Promise<void> {
    let res: { keys: DkimSigningKey[] };
    try {
      // A background poll, for no one message: traced by nobody.
      res = await untraced(() => unary(this.o.policy.getDkimSigningKeys.bind(this.o.policy), {}, { deadlineMs: this.o.deadlineMs }));
    } catch (err) {
      // A policy of a release without the key store (an upgrade under way): no API keys, as before.
      if (!isGrpcError(err) || err.code !== grpc.status.UNIMPLEMENTED) throw err;
      res = { keys: [] };
    }
    const fingerprint = res.keys.map((k) => `${k.domain}/${k.selector}/${k.algorithm}/${Buffer.from(k.sealedPrivateKey).toString('base64')}`).join('\n');
    if (fingerprint === this.fingerprint && this.loaded) return;
    const next = new Map<string, DkimKey>();
    const problems: string[] = [];
    for (const k of res.keys) {
      const slot = `${k.domain}/${k.algorithm}`;
      try {
        next.set(slot, this.open(k));
      } catch (err) {
        problems.push(errorMessage(err));
        const previous = this.current.get(slot);
        if (previous) next.set(slot, previous);
      }
    }
    if (problems.length && atStart) throw new DkimKeyError(problems.join('; '));
    // Said once per distinct problem, not at every poll.
    if (problems.join('\n') !== this.lastProblems) {
      for (const p of problems) this.o.logger.error({ event: 'dkim_key_unusable' }, `${p}; the previous key of that domain (if any) keeps signing`);
    }
    this.lastProblems = problems.join('\n');
    const changed = [...next.values()].map((k) => `${k.domain}/${k.selector}`).sort();
    const before = [...this.current.values()].map((k) => `${k.domain}/${k.selector}`).sort();
    this.current = next;
    this.o.signer.setApiKeys([...next.values()]);
    this.fingerprint = problems.length ? '' : fingerprint;
    this.loaded = true;
    if (changed.join(',') !== before.join(',')) this.o.logger.info({ event: 'dkim_keys_loaded', keys: changed }, `DKIM keys from the admin API: ${changed.length}`);
  }

  private open(k: DkimSigningKey): DkimKey {
    const what = `DKIM key of ${k.domain} (selector ${k.selector})`;
    if (!this.o.kek) throw new DkimKeyError(`TERN_DKIM_KEK: not set, but policy has the ${what}; set it to policy's key-encryption key (the same Secret)`);
    let pem: Buffer;
    try {
      pem = unseal(this.o.kek, k.sealedPrivateKey, sealLabel(k.domain, k.selector));
    } catch (err) {
      if (err instanceof KekError) throw new DkimKeyError(`TERN_DKIM_KEK: does not open the ${what}: not the key-encryption key policy stored it with; set the same key on both`);
      throw err;
    }
    const key = dkimPrivateKey(pem);
    const expected = k.algorithm === DkimAlgorithm.DKIM_ALGORITHM_ED25519 ? 'ed25519' : 'rsa';
    if (key.algorithm !== expected) throw new DkimKeyError(`the ${what} is ${key.algorithm}, listed as ${expected}`);
    return { domain: k.domain, selector: k.selector, ...key, source: 'api' };
  }
}
