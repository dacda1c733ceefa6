// SMTP replies. Every 2xx/4xx/5xx reply carries an RFC 3463 enhanced status
// code whose class matches the reply code; the exceptions RFC 2034 makes (the
// 220 greeting and the EHLO/HELO reply) and the 3xx intermediate replies,
// which have no enhanced class, are written without one.

export interface Reply {
  /** Three-digit reply code, e.g. 250, 451, 550. */
  code: number;
  /** Enhanced status code ("2.1.5"). Filled in from the code's class when missing. */
  enhanced?: string;
  /** One line, or several for a multi-line reply. Must not contain CR or LF. */
  text: string | readonly string[];
  /**
   * A 4xx for a reason of the server's, not the client's (a dependency
   * down, the queue full): it does not count toward the session's error
   * limit (SmtpLimits.maxErrors); unavailableCloseMs bounds how long a
   * session keeps getting them.
   */
  ourFault?: boolean;
}

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}$/;

export function reply(code: number, enhanced: string | undefined, text: string | readonly string[]): Reply {
  return enhanced === undefined ? { code, text } : { code, enhanced, text };
}

export function isPositive(r: Reply): boolean {
  return r.code >= 200 && r.code < 300;
}

/**
 * Makes a reply safe to send: a valid code, an enhanced code of the same
 * class (a mismatched one gets its class digit fixed, a missing one becomes
 * `<class>.0.0`), and no CR, LF or NUL inside the text.
 */
export function normalizeReply(r: Reply, withEnhanced = true): Reply {
  let code = Math.trunc(r.code);
  if (!(code >= 200 && code <= 599)) code = 451;
  const klass = Math.floor(code / 100);
  const rawLines = typeof r.text === 'string' ? [r.text] : r.text.length > 0 ? r.text : [''];
  const lines = rawLines.map((l) => l.replace(/[\r\n\0]+/g, ' '));
  const ourFault = r.ourFault && klass === 4 ? { ourFault: true } : {};
  if (!withEnhanced || klass === 3) return { code, text: lines, ...ourFault };
  let enhanced = r.enhanced;
  if (enhanced === undefined || !ENHANCED.test(enhanced)) enhanced = `${klass}.0.0`;
  else if (enhanced[0] !== String(klass)) enhanced = `${klass}${enhanced.slice(1)}`;
  return { code, enhanced, text: lines, ...ourFault };
}

/** Wire form: "250-first\r\n250 last\r\n", enhanced code after the reply code. */
export function formatReply(r: Reply, withEnhanced = true): string {
  const n = normalizeReply(r, withEnhanced);
  const lines = n.text as string[];
  let out = '';
  for (let i = 0; i < lines.length; i++) {
    const sep = i === lines.length - 1 ? ' ' : '-';
    const text = lines[i] ?? '';
    const body = n.enhanced ? (text ? `${n.enhanced} ${text}` : n.enhanced) : text;
    out += `${n.code}${sep}${body}\r\n`;
  }
  return out;
}

/** "550 5.1.1 text" in one string (for logs). */
export function replyToString(r: Reply): string {
  const n = normalizeReply(r);
  const lines = n.text as string[];
  return `${n.code}${n.enhanced ? ` ${n.enhanced}` : ''} ${lines.join(' / ')}`.trim();
}

/** Parses "550 5.1.1 text" (for replies carried in configuration or tests). */
export function parseReplyLine(line: string): Reply | undefined {
  const m = /^([2-5]\d\d)(?:[ -]([245]\.\d{1,3}\.\d{1,3}))?(?:[ -](.*))?$/.exec(line);
  if (!m) return undefined;
  return reply(Number(m[1]), m[2], m[3] ?? '');
}

// The engine's own replies, in one place (texts follow Postfix where it has one).
export const Replies = {
  ok: reply(250, '2.0.0', 'Ok'),
  mailOk: reply(250, '2.1.0', 'Ok'),
  rcptOk: reply(250, '2.1.5', 'Ok'),
  bye: reply(221, '2.0.0', 'Bye'),
  help: reply(214, '2.0.0', 'Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH; see RFC 5321'),
  vrfyCannot: reply(252, '2.5.0', 'Cannot VRFY user, but will accept message and attempt delivery'),
  startData: reply(354, undefined, 'End data with <CR><LF>.<CR><LF>'),
  readyTls: reply(220, '2.0.0', 'Ready to start TLS'),
  authOk: reply(235, '2.7.0', 'Authentication successful'),

  // RFC 5321 4.2.4: 500 for a command not recognised, 502 for one recognised but not implemented.
  notRecognized: reply(500, '5.5.2', 'Error: command not recognized'),
  notImplemented: reply(502, '5.5.1', 'Error: command not implemented'),
  expnDisabled: reply(502, '5.5.1', 'Error: EXPN command is disabled'),
  etrnDisabled: reply(502, '5.5.1', 'Error: ETRN command is disabled'),
  sendHeloFirst: reply(503, '5.5.1', 'Error: send HELO/EHLO first'),
  nestedMail: reply(503, '5.5.1', 'Error: nested MAIL command'),
  needMail: reply(503, '5.5.1', 'Error: need MAIL command'),
  needRcpt: reply(503, '5.5.1', 'Error: need RCPT command'),
  inTransaction: reply(503, '5.5.1', 'Error: MAIL transaction in progress'),
  dataAfterBdat: reply(503, '5.5.1', 'Error: DATA cannot be used with BDAT or BODY=BINARYMIME'),
  bdatFailed: reply(503, '5.5.1', 'Error: previous BDAT failed, send RSET'),
  alreadyAuthenticated: reply(503, '5.5.1', 'Error: already authenticated'),
  tlsActive: reply(554, '5.5.1', 'Error: TLS already active'),
  lineTooLong: reply(500, '5.5.2', 'Error: line too long'),
  badCharacter: reply(500, '5.5.2', 'Error: bad character in command'),
  badUtf8: reply(500, '5.5.2', 'Error: invalid UTF-8 in command'),
  syntaxHelo: reply(501, '5.5.4', 'Syntax: HELO hostname'),
  syntaxEhlo: reply(501, '5.5.4', 'Syntax: EHLO hostname'),
  syntaxData: reply(501, '5.5.4', 'Syntax: DATA'),
  // The session ends with it (the chunk's octets cannot be skipped): 521, as Postfix, not a 501 the client would take as recoverable.
  syntaxBdat: reply(521, '5.5.4', 'Syntax: BDAT count [LAST]'),
  syntaxNoArgs: reply(501, '5.5.4', 'Syntax: command takes no arguments'),
  syntaxVrfy: reply(501, '5.5.4', 'Syntax: VRFY address'),
  syntaxEtrn: reply(501, '5.5.4', 'Syntax: ETRN domain'),
  syntaxAuth: reply(501, '5.5.4', 'Syntax: AUTH mechanism [initial-response]'),
  authNotAvailable: reply(503, '5.5.1', 'Error: authentication not enabled'),
  authUnknownMech: reply(504, '5.5.4', 'Unrecognized authentication type'),
  authBadBase64: reply(501, '5.5.2', 'Cannot decode response'),
  authAborted: reply(501, '5.7.0', 'Authentication aborted'),
  authFailed: reply(535, '5.7.8', 'Authentication credentials invalid'),
  authNeedsTls: reply(538, '5.7.11', 'Encryption required for requested authentication mechanism'),
  authRequired: reply(530, '5.7.0', 'Authentication required'),
  mustIssueStarttls: reply(530, '5.7.0', 'Must issue a STARTTLS command first'),
  requireTlsNeedsTls: reply(530, '5.7.10', 'REQUIRETLS needs a TLS session'),
  tooManyRecipients: reply(452, '4.5.3', 'Error: too many recipients'),
  messageTooBig: reply(552, '5.3.4', 'Error: message file too big'),
  bareLineEnding: reply(554, '5.6.0', 'Error: bare <CR> or <LF> received in message data; only CRLF line endings are allowed'),
  nulInData: reply(554, '5.6.0', 'Error: NUL character received in message data'),
  textLineTooLong: reply(554, '5.6.0', 'Error: message line too long (limit 1000 octets including CRLF)'),
  nonAsciiAddress: reply(553, '5.6.7', 'Error: non-ASCII address requires SMTPUTF8'),
  hookFailed: { ...reply(451, '4.3.0', 'Error: internal error, try again later'), ourFault: true },
  pregreet: reply(554, '5.5.0', 'Error: SMTP protocol synchronization (talked before greeting)'),
  pipelining: reply(554, '5.5.0', 'Error: SMTP protocol synchronization (improper command pipelining)'),
  startTlsUnavailable: reply(454, '4.7.0', 'TLS not available due to local problem'),
} as const;

export function closing(hostname: string, enhanced: string, text: string): Reply {
  return reply(421, enhanced, `${hostname} ${text}`);
}
