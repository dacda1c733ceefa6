// Per-listener counts of commands and replies, kept as plain integers on the
// message path; a metrics exporter reads them when it is scraped.

/** The verbs counted under their own name; anything else counts as "other". */
export const COUNTED_VERBS = ['EHLO', 'HELO', 'LHLO', 'STARTTLS', 'AUTH', 'MAIL', 'RCPT', 'DATA', 'BDAT', 'RSET', 'NOOP', 'VRFY', 'EXPN', 'ETRN', 'HELP', 'QUIT'] as const;
export type CountedVerb = (typeof COUNTED_VERBS)[number] | 'other';

export class SmtpStats {
  /** Commands received, by verb (bounded: COUNTED_VERBS and "other"). */
  readonly commands = new Map<CountedVerb, number>();
  /** Replies sent, by the first digit of the code (index 2-5); 334 challenges count as 3. */
  readonly replies = [0, 0, 0, 0, 0, 0];
  private readonly known = new Set<string>(COUNTED_VERBS);

  command(verb: string): void {
    const key = (this.known.has(verb) ? verb : 'other') as CountedVerb;
    this.commands.set(key, (this.commands.get(key) ?? 0) + 1);
  }

  /** `text` is one whole formatted reply (one or more lines). */
  reply(text: string): void {
    const digit = text.charCodeAt(0) - 48;
    if (digit >= 2 && digit <= 5) this.replies[digit] = (this.replies[digit] ?? 0) + 1;
  }
}
