// The operator's bounce classification rules (table bounce_rules), checked
// before libs/dsn's built-in ones. Cached in memory and reloaded every few
// seconds, so a rule changed through any replica applies on all of them.
import { classifyReply, validateBounceRule, type BounceClass, type BounceRule as DsnRule, type ClassifiedReply } from '@tern/dsn';
import type { Pool } from '@tern/db';
import { BounceRule, type DeleteBounceRuleRequest, type PutBounceRuleRequest } from '@tern/proto';
import { errorMessage, repeatEvery, type Repeating } from '@tern/runtime';
import type { Logger } from '@tern/telemetry';
import { tx } from './db';
import { InvalidArgumentError, InvalidFieldError } from './errors';

interface RuleRow {
  name: string;
  code_prefix: string;
  pattern: string;
  bounce_class: string;
  description: string;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

const toProto = (r: RuleRow) => BounceRule.fromPartial({ name: r.name, codePrefix: r.code_prefix, pattern: r.pattern, bounceClass: r.bounce_class, description: r.description });
const toDsn = (r: RuleRow): DsnRule => ({ codePrefix: r.code_prefix, pattern: r.pattern, class: r.bounce_class as BounceClass });

export class BounceRules {
  private rows: RuleRow[] = [];
  private rules: DsnRule[] = [];
  private reloads: Repeating | undefined;

  constructor(
    private readonly pool: Pool,
    private readonly logger: Logger,
    private readonly reloadMs = 5_000,
  ) {}

  async load(): Promise<void> {
    const { rows } = await this.pool.query<RuleRow>('SELECT name, code_prefix, pattern, bounce_class, description FROM bounce_rules ORDER BY name');
    // A rule that no longer validates (edited by hand) is skipped, not fatal.
    const valid = rows.filter((r) => {
      const problem = validateBounceRule(toDsn(r));
      if (problem) this.logger.warn({ rule: r.name, problem }, 'bounce rule skipped');
      return !problem;
    });
    this.rows = valid;
    this.rules = valid.map(toDsn);
  }

  start(): void {
    this.reloads = repeatEvery(this.reloadMs, () => this.load(), (err) => this.logger.warn({ err: errorMessage(err) }, 'bounce rule reload failed; keeping the previous rules'));
  }

  stop(): void {
    this.reloads?.stop();
  }

  /** The class of a failure reply, operator rules first. */
  classify(reply: ClassifiedReply): BounceClass {
    return classifyReply(reply, this.rules);
  }

  list(): BounceRule[] {
    return this.rows.map(toProto);
  }

  async put(req: PutBounceRuleRequest): Promise<BounceRule> {
    const r = req.rule;
    if (!r) throw new InvalidFieldError('rule', 'required');
    const name = r.name.trim().toLowerCase();
    if (!NAME.test(name)) throw new InvalidFieldError('rule.name', `"${r.name}" must be 1-64 of a-z, 0-9, . _ - (rules are checked in name order)`);
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required (who is acting, recorded with the change)');
    const row: RuleRow = { name, code_prefix: r.codePrefix.trim(), pattern: r.pattern, bounce_class: r.bounceClass.trim(), description: r.description.trim() };
    if (!row.code_prefix && !row.pattern) {
      throw new InvalidFieldError('rule.code_prefix, rule.pattern', 'give one or both (tern bounce-rule set NAME CLASS --code 5.7.1 or --text REGEX): a rule matching every reply would classify everything');
    }
    const problem = validateBounceRule(toDsn(row));
    if (problem) throw new InvalidArgumentError(`rule.${problem.replace(/^class:/, 'bounce_class:')}`);
    await tx(this.pool, async (c) => {
      await c.query(
        `INSERT INTO bounce_rules (name, code_prefix, pattern, bounce_class, description) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET code_prefix = $2, pattern = $3, bounce_class = $4, description = $5, updated_at = now()`,
        [row.name, row.code_prefix, row.pattern, row.bounce_class, row.description],
      );
      await c.query(`INSERT INTO operator_events (subject, operator, action, detail) VALUES ($1, $2, 'put_bounce_rule', $3::jsonb)`, [row.name, req.operator.trim(), JSON.stringify(row)]);
    });
    await this.load();
    return toProto(row);
  }

  async delete(req: DeleteBounceRuleRequest): Promise<boolean> {
    const name = req.name.trim().toLowerCase();
    if (!name) throw new InvalidFieldError('name', 'required');
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required (who is acting, recorded with the change)');
    const deleted = await tx(this.pool, async (c) => {
      const r = await c.query('DELETE FROM bounce_rules WHERE name = $1', [name]);
      const gone = (r.rowCount ?? 0) > 0;
      if (gone) await c.query(`INSERT INTO operator_events (subject, operator, action) VALUES ($1, $2, 'delete_bounce_rule')`, [name, req.operator.trim()]);
      return gone;
    });
    await this.load();
    return deleted;
  }
}
