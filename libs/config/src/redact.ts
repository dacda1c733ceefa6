// URLs of Postgres and NATS carry credentials (postgres://tern:PASSWORD@...,
// nats://user:PASSWORD@..., nats://TOKEN@...). Whatever writes a URL into a
// log line or an error message passes it through redactUrl first, so that a
// log pipeline never holds a password (invariant I5).

/** Schemes whose user name alone is a secret: NATS reads `nats://TOKEN@host` as a token. */
const TOKEN_SCHEMES = new Set(['nats', 'tls', 'ws', 'wss']);

const MASK = '***';

/**
 * `text` with every URL's password replaced by `***`: the password of
 * `user:password@`, a NATS user given alone (a token), and `password=` (or
 * `sslpassword=`) query parameters. Anything else stays as it is, so the
 * host, port and database still show: `postgres://tern:***@pg:5432/tern`.
 * Takes one URL, a comma-separated list (NATS servers) or any text holding
 * URLs; text without them comes back unchanged.
 */
export function redactUrl(text: string): string {
  let out = '';
  let at = 0;
  // A scheme, then "//": where a URL's authority starts.
  const scheme = /\b([a-z][a-z0-9+.-]*):\/\//gi;
  for (let m = scheme.exec(text); m; m = scheme.exec(text)) {
    const start = m.index + m[0].length;
    // The URL ends at whitespace, a comma (the next server of a list) or a quote.
    let end = text.slice(start).search(/[\s,"'<>]/);
    end = end < 0 ? text.length : start + end;
    const url = text.slice(start, end);
    const first = url.indexOf('@');
    if (first < 0) continue;
    // The user info ends at the last '@' before the path, query or fragment
    // that follow the host: an unencoded '@' or '/' in a password is then
    // still inside it, and an '@' in the path or query is not.
    const afterHost = url.slice(first + 1).search(/[/?#]/);
    const authorityEnd = afterHost < 0 ? url.length : first + 1 + afterHost;
    const last = url.lastIndexOf('@', authorityEnd - 1);
    const userinfo = url.slice(0, last);
    const colon = userinfo.indexOf(':');
    let shown: string;
    if (colon >= 0) shown = `${userinfo.slice(0, colon)}:${MASK}`;
    else if (TOKEN_SCHEMES.has(m[1]!.toLowerCase())) shown = MASK;
    else continue; // a user name alone (postgres://tern@host) is no secret
    out += text.slice(at, start) + shown;
    at = start + last;
    scheme.lastIndex = end;
  }
  out += text.slice(at);
  return out.replace(/([?&](?:ssl)?password=)[^&\s,"']*/gi, `$1${MASK}`);
}
