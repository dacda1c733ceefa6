// Bounce classification: what a failed delivery attempt means, from the
// reply's enhanced status code (RFC 3463) and its text. Only a class that
// says the address is dead (user_unknown) puts a recipient on the
// suppression list; a reputation block backs off the whole destination.
// Operator rules (data, checked first) extend the built-in ones.

export const BOUNCE_CLASSES = [
  'user_unknown',
  'mailbox_full',
  'policy',
  'reputation',
  'message_too_large',
  'dns_failure',
  'tls_failure',
  'rate_limited',
  'other',
] as const;
export type BounceClass = (typeof BOUNCE_CLASSES)[number];

export function isBounceClass(s: string): s is BounceClass {
  return (BOUNCE_CLASSES as readonly string[]).includes(s);
}

export interface ClassifiedReply {
  code: number;
  /** "5.1.1", or "" when the server gave none. */
  enhanced: string;
  text: string;
}

/** An operator's rule: matches when every given condition holds. */
export interface BounceRule {
  /** Prefix of the enhanced code ("5.7.", "4.7.28") or of the basic code ("550"); empty = any. */
  codePrefix: string;
  /** Regular expression over the reply text, case-insensitive; empty = any. */
  pattern: string;
  class: BounceClass;
}

/** Text of a rule pattern at most this long (operators' regexes run on every failure). */
export const MAX_RULE_PATTERN = 512;
/** Reply text looked at: the start, where servers put the reason. */
const TEXT_SCANNED = 1024;

/** Checks an operator rule; returns the problem, naming the field, or undefined. */
export function validateBounceRule(r: BounceRule): string | undefined {
  if (!isBounceClass(r.class)) return `class: "${r.class}" is not one of ${BOUNCE_CLASSES.join(', ')}`;
  if (!r.codePrefix && !r.pattern) return 'give code_prefix or pattern (a rule matching every reply would classify everything)';
  if (r.codePrefix && !/^[245](\d\d|\.\d{1,3}(\.\d{0,3})?)?\.?$/.test(r.codePrefix)) return `code_prefix: "${r.codePrefix}" is not a reply code or enhanced status code prefix (e.g. 550, 5.7., 4.7.28)`;
  if (r.pattern.length > MAX_RULE_PATTERN) return `pattern: longer than ${MAX_RULE_PATTERN} characters`;
  try {
    new RegExp(r.pattern, 'i');
  } catch (err) {
    return `pattern: not a valid regular expression (${(err as Error).message})`;
  }
  return undefined;
}

/** Enhanced codes whose meaning is not in doubt, whatever the text says. */
const EXACT_CODES: Array<[string, BounceClass]> = [
  ['.1.1', 'user_unknown'], // bad destination mailbox address
  ['.1.3', 'user_unknown'], // bad destination mailbox address syntax
  ['.1.6', 'user_unknown'], // mailbox has moved
  ['.2.2', 'mailbox_full'],
  ['.2.3', 'message_too_large'], // message length exceeds administrative limit
  ['.3.4', 'message_too_large'], // message too big for system
  ['.7.10', 'tls_failure'], // encryption needed (REQUIRETLS)
  ['.7.11', 'tls_failure'], // encryption required for requested authentication mechanism
  ['.7.28', 'rate_limited'], // mail flood / per-source limit (Gmail's 4.7.28)
];

/** Built-in text rules, most specific first (a blocklist reply often says 5.7.1 or even 5.1.1 too). */
const TEXT_RULES: Array<[RegExp, BounceClass]> = [
  // Greylisting is a deliberate first refusal, not a verdict on anything.
  [/greylist|graylist/i, 'other'],
  [/spamhaus|barracuda|spamcop|sorbs|\brbl\b|dnsbl|blocklist|blacklist|block list|\blisted (at|in|on|by)\b|banned sending ip|poor reputation|ip reputation|sender reputation|\breputation\b|permanently deferred|not accepted from (this|your) ip/i, 'reputation'],
  [/rate limit|ratelimit|too (quickly|fast)|too many (messages|connections|mails?\b|concurrent)|concurrent (server )?connections|throttl|unexpected volume|server busy|exceeded .*(rate|sending limit)|sending limit|try again later.*(volume|rate)/i, 'rate_limited'],
  [/mailbox (is )?full|over quota|quota exceeded|exceeded .*(storage|quota)|insufficient storage|mailbox size limit|out of storage/i, 'mailbox_full'],
  [/message (size )?(is )?too (big|large)|exceeds .*size|size (limit|exceeds)|message length exceeds/i, 'message_too_large'],
  [/\btls\b|starttls|certificate|x509|encryption required|handshake/i, 'tls_failure'],
  [/user unknown|unknown user|no such (user|mailbox|recipient|address|account)|mailbox (is )?(unavailable|not found|does not exist|disabled)|recipient (unknown|not found)|address (does not exist)|user does not exist|does not exist|invalid (recipient|mailbox)|account (is )?(disabled|inactive)|doesn'?t have an? [\w.-]+ account|not a valid mailbox/i, 'user_unknown'],
  [/host not found|domain not found|\bdomain\b[^.;]*\b(does not exist|not found)|no mx\b|nxdomain|name service error|dns (lookup|error|failure|query)|unrouteable|unroutable|no such domain/i, 'dns_failure'],
  [/spam|unsolicited|content|virus|malware|phish|policy|dmarc|\bspf\b|\bdkim\b|not authorized|relay (access )?denied|access denied|authentication required|cannot find your hostname/i, 'policy'],
];

const USER_UNKNOWN_TEXT = TEXT_RULES.find(([, cls]) => cls === 'user_unknown')![0];

/**
 * Enhanced code classes when neither an exact code nor the text decided:
 * a permanent X.7.x is a security or policy refusal; a temporary one
 * (Gmail's 4.7.0 "try again later" among them) says too little. X.1.0 is
 * given for sender problems too, so other X.1.x are not an unknown user.
 */
const CODE_CLASSES: Array<[string, BounceClass]> = [['5.2.', 'mailbox_full'], ['4.2.', 'mailbox_full'], ['5.7.', 'policy']];

const compiled = new WeakMap<BounceRule, RegExp | null>();
function patternOf(rule: BounceRule): RegExp | null {
  let re = compiled.get(rule);
  if (re === undefined) {
    re = rule.pattern ? new RegExp(rule.pattern, 'i') : null;
    compiled.set(rule, re);
  }
  return re;
}

function codeMatches(prefix: string, reply: ClassifiedReply): boolean {
  if (!prefix) return true;
  return prefix.includes('.') ? reply.enhanced.startsWith(prefix) : String(reply.code).startsWith(prefix);
}

/** Classifies one failure reply (4xx or 5xx, real or synthesized by delivery). */
export function classifyReply(reply: ClassifiedReply, rules: readonly BounceRule[] = []): BounceClass {
  const text = reply.text.length > TEXT_SCANNED ? reply.text.slice(0, TEXT_SCANNED) : reply.text;
  for (const rule of rules) {
    if (!codeMatches(rule.codePrefix, reply)) continue;
    const re = patternOf(rule);
    if (re && !re.test(text)) continue;
    return rule.class;
  }
  const detail = reply.enhanced ? reply.enhanced.slice(reply.enhanced.indexOf('.')) : '';
  // X.1.10 is RFC 7505's null MX, but Microsoft also gives it for an unknown recipient: the text decides.
  if (detail === '.1.2' || detail === '.1.10') return USER_UNKNOWN_TEXT.test(text) ? 'user_unknown' : 'dns_failure';
  if (detail === '.4.4' || detail === '.4.3') return 'dns_failure';
  // 5.2.1 is a disabled mailbox; Gmail's 4.2.1 is a recipient receiving too fast (left to the text).
  if (reply.enhanced === '5.2.1') return 'user_unknown';
  for (const [suffix, cls] of EXACT_CODES) if (detail === suffix) return cls;
  for (const [re, cls] of TEXT_RULES) if (re.test(text)) return cls;
  for (const [prefix, cls] of CODE_CLASSES) if (reply.enhanced.startsWith(prefix)) return cls;
  // RFC 5321's 552 is "exceeded storage allocation"; a bare 550 is too vague to call an address dead.
  if (reply.code === 552) return 'mailbox_full';
  return 'other';
}

/** The classes that mean the address itself is dead: a permanent one suppresses it. */
export function suppressesAddress(cls: BounceClass): boolean {
  return cls === 'user_unknown';
}

/** The classes that concern the sending host or domain, not one recipient: the scheduler backs off the destination. */
export function backsOffDestination(cls: BounceClass): boolean {
  return cls === 'reputation' || cls === 'rate_limited';
}
