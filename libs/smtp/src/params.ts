// MAIL FROM / RCPT TO parameters (RFC 5321 esmtp-param), parsed strictly:
// SIZE (1870), BODY (6152, 3030), SMTPUTF8 (6531), RET/ENVID (3461),
// AUTH (4954), REQUIRETLS (8689); NOTIFY/ORCPT (3461, 6533).
// Unknown keywords are 555 5.5.4, malformed values 501 5.5.4, duplicates 501.
import { reply, type Reply } from './reply';

export type BodyType = '7BIT' | '8BITMIME' | 'BINARYMIME';
export type DsnRet = 'FULL' | 'HDRS';
export type DsnNotify = 'NEVER' | 'SUCCESS' | 'FAILURE' | 'DELAY';

export interface MailParams {
  /** SIZE= as declared (octets); undefined when not given. */
  size?: number;
  /** BODY=; undefined when not given (7BIT). */
  body?: BodyType;
  smtputf8: boolean;
  ret?: DsnRet;
  /** ENVID, xtext-decoded. */
  envid?: string;
  requiretls: boolean;
  /** AUTH= (RFC 4954), xtext-decoded; "<>" when the client says unknown. */
  auth?: string;
}

export interface Orcpt {
  /** Address type, lower case ("rfc822", "utf-8"). */
  type: string;
  /** Decoded original recipient. */
  address: string;
}

export interface RcptParams {
  /** NOTIFY keywords; undefined when not given. */
  notify?: DsnNotify[];
  orcpt?: Orcpt;
}

export interface ParamContext {
  /** Largest message accepted (SIZE check). */
  maxMessageSize: number;
  /** Session is under TLS (REQUIRETLS is only offered then). */
  tls: boolean;
  /** AUTH is offered on this listener. */
  authEnabled: boolean;
}

type ParamResult<T> = { ok: true; params: T } | { ok: false; reply: Reply };

const KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
// esmtp-value: %d33-60 / %d62-126, plus UTF-8 (RFC 6531)
const VALUE = /^[\x21-\x3c\x3e-\x7e\u00a0-\uffff]+$/;

const bad = (text: string): { ok: false; reply: Reply } => ({ ok: false, reply: reply(501, '5.5.4', text) });

/**
 * Decodes xtext (RFC 3461 section 4): "+XX" with upper-case hex; other
 * characters %d33-126 except "+" and "=". Returns undefined if malformed.
 */
export function decodeXtext(s: string): string | undefined {
  if (!/^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$/.test(s)) return undefined;
  if (!s.includes('+')) return s;
  const bytes = Buffer.from(s.replace(/\+([0-9A-F]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16))), 'latin1');
  return bytes.toString('utf8');
}

/** Decodes utf-8-addr-unitext (RFC 6533): UTF-8 plus "\x{HEX}" escapes. */
function decodeUnitext(s: string): string | undefined {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20=+]/.test(s.replace(/\\x\{[0-9A-F]{2,6}\}/g, ''))) return undefined;
  let ok = true;
  const out = s.replace(/\\x\{([0-9A-F]{2,6})\}/g, (_m, hex: string) => {
    const cp = parseInt(hex, 16);
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      ok = false;
      return '';
    }
    return String.fromCodePoint(cp);
  });
  return ok ? out : undefined;
}

function splitParams(s: string): Array<{ key: string; value: string | undefined }> | { error: Reply } {
  const out: Array<{ key: string; value: string | undefined }> = [];
  for (const token of s.split(' ')) {
    if (token === '') continue; // several spaces between parameters: tolerated (Postfix does)
    const eq = token.indexOf('=');
    const key = eq < 0 ? token : token.slice(0, eq);
    const value = eq < 0 ? undefined : token.slice(eq + 1);
    if (!KEYWORD.test(key)) return { error: reply(501, '5.5.4', `Error: bad parameter syntax: ${token.slice(0, 40)}`) };
    if (value !== undefined && !VALUE.test(value)) {
      return { error: reply(501, '5.5.4', `Error: bad value for parameter ${key.toUpperCase()}`) };
    }
    out.push({ key: key.toUpperCase(), value });
  }
  return out;
}

/** Parses what follows the reverse-path of MAIL FROM. */
export function parseMailParams(s: string, ctx: ParamContext): ParamResult<MailParams> {
  const list = splitParams(s);
  if ('error' in list) return { ok: false, reply: list.error };
  const params: MailParams = { smtputf8: false, requiretls: false };
  const seen = new Map<string, string | undefined>();
  for (const { key, value } of list) {
    // An identical repeat is tolerated (Python's smtplib sends them; Postfix
    // accepts them); a conflicting one is refused.
    if (seen.has(key)) {
      if (seen.get(key)?.toUpperCase() === value?.toUpperCase()) continue;
      return bad(`Error: conflicting duplicate parameter ${key}`);
    }
    seen.set(key, value);
    switch (key) {
      case 'SIZE': {
        if (value === undefined || !/^\d{1,20}$/.test(value)) return bad('Error: bad SIZE parameter syntax');
        const n = Number(value);
        if (n > ctx.maxMessageSize) return { ok: false, reply: reply(552, '5.3.4', 'Error: message size exceeds fixed limit') };
        params.size = n;
        break;
      }
      case 'BODY': {
        const v = value?.toUpperCase();
        if (v !== '7BIT' && v !== '8BITMIME' && v !== 'BINARYMIME') return bad('Error: bad BODY parameter: use 7BIT, 8BITMIME or BINARYMIME');
        params.body = v;
        break;
      }
      case 'SMTPUTF8':
        if (value !== undefined) return bad('Error: SMTPUTF8 takes no value');
        params.smtputf8 = true;
        break;
      case 'RET': {
        const v = value?.toUpperCase();
        if (v !== 'FULL' && v !== 'HDRS') return bad('Error: bad RET parameter: use FULL or HDRS');
        params.ret = v;
        break;
      }
      case 'ENVID': {
        const decoded = value === undefined ? undefined : decodeXtext(value);
        if (decoded === undefined || decoded.length === 0 || value!.length > 100) return bad('Error: bad ENVID parameter syntax');
        if (/[^\x20-\x7e]/.test(decoded)) return bad('Error: ENVID must be printable ASCII');
        params.envid = decoded;
        break;
      }
      case 'AUTH': {
        if (!ctx.authEnabled) return { ok: false, reply: reply(555, '5.5.4', 'Error: unsupported parameter AUTH') };
        const decoded = value === undefined ? undefined : decodeXtext(value);
        if (decoded === undefined || decoded.length === 0) return bad('Error: bad AUTH parameter syntax');
        params.auth = decoded;
        break;
      }
      case 'REQUIRETLS':
        if (value !== undefined) return bad('Error: REQUIRETLS takes no value');
        if (!ctx.tls) return { ok: false, reply: reply(530, '5.7.10', 'Error: REQUIRETLS needs a TLS session') };
        params.requiretls = true;
        break;
      default:
        return { ok: false, reply: reply(555, '5.5.4', `Error: unsupported parameter ${key.slice(0, 40)}`) };
    }
  }
  return { ok: true, params };
}

/** Parses what follows the forward-path of RCPT TO. */
export function parseRcptParams(s: string): ParamResult<RcptParams> {
  const list = splitParams(s);
  if ('error' in list) return { ok: false, reply: list.error };
  const params: RcptParams = {};
  const seen = new Map<string, string | undefined>();
  for (const { key, value } of list) {
    if (seen.has(key)) {
      if (seen.get(key) === value) continue;
      return bad(`Error: conflicting duplicate parameter ${key}`);
    }
    seen.set(key, value);
    switch (key) {
      case 'NOTIFY': {
        if (value === undefined) return bad('Error: bad NOTIFY parameter syntax');
        const items = value.toUpperCase().split(',');
        const set = new Set<DsnNotify>();
        for (const item of items) {
          if (item !== 'NEVER' && item !== 'SUCCESS' && item !== 'FAILURE' && item !== 'DELAY') return bad('Error: bad NOTIFY parameter syntax');
          if (set.has(item)) return bad('Error: bad NOTIFY parameter syntax');
          set.add(item);
        }
        if (set.has('NEVER') && set.size > 1) return bad('Error: NOTIFY=NEVER cannot be combined with other keywords');
        params.notify = [...set];
        break;
      }
      case 'ORCPT': {
        if (value === undefined) return bad('Error: bad ORCPT parameter syntax');
        const semi = value.indexOf(';');
        if (semi <= 0) return bad('Error: bad ORCPT parameter syntax');
        const type = value.slice(0, semi).toLowerCase();
        if (!/^[a-z0-9][a-z0-9-]*$/.test(type)) return bad('Error: bad ORCPT address type');
        const raw = value.slice(semi + 1);
        const address = type === 'utf-8' ? decodeUnitext(raw) : decodeXtext(raw);
        if (address === undefined || address.length === 0 || raw.length > 500) return bad('Error: bad ORCPT parameter syntax');
        // eslint-disable-next-line no-control-regex
        if (/[\x00-\x1f\x7f]/.test(address)) return bad('Error: bad ORCPT parameter syntax');
        params.orcpt = { type, address };
        break;
      }
      default:
        return { ok: false, reply: reply(555, '5.5.4', `Error: unsupported parameter ${key.slice(0, 40)}`) };
    }
  }
  return { ok: true, params };
}
