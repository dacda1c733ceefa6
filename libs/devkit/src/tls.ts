// Self-signed certificates for tests, made in-process (no openssl): an ECDSA
// P-256 key and an X.509 v3 certificate with subjectAltName DNS names and IP
// addresses. Also the digests a TLSA record needs (DANE, RFC 6698).
import crypto from 'node:crypto';
import net from 'node:net';

export interface SelfSignedCert {
  /** PEM, PKCS#8. */
  key: string;
  /** PEM. */
  cert: string;
  /** SHA-256 of the DER certificate (TLSA selector 0, matching type 1), hex. */
  certSha256: string;
  /** SHA-256 of the DER SubjectPublicKeyInfo (TLSA selector 1, matching type 1), hex. */
  spkiSha256: string;
}

export interface SelfSignedOptions {
  /** DNS names and IP addresses; the first is also the subject CN. Default ["localhost", "127.0.0.1"]. */
  names?: string[];
  /** Validity in days from now (default 3650); negative makes an expired certificate. */
  days?: number;
  /** Mark as a CA (basicConstraints cA=TRUE). */
  ca?: boolean;
}

// ---- minimal DER encoding

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  while (n > 0) {
    bytes.unshift(n & 0xff);
    n >>= 8;
  }
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), len(body.length), body]);
}
const seq = (...c: Buffer[]) => tlv(0x30, ...c);
const set = (...c: Buffer[]) => tlv(0x31, ...c);
function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number);
  const out: number[] = [40 * parts[0]! + parts[1]!];
  for (const p of parts.slice(2)) {
    const stack = [p & 0x7f];
    let v = p >> 7;
    while (v > 0) {
      stack.unshift((v & 0x7f) | 0x80);
      v >>= 7;
    }
    out.push(...stack);
  }
  return tlv(0x06, Buffer.from(out));
}
function integer(bytes: Buffer): Buffer {
  let b = bytes;
  while (b.length > 1 && b[0] === 0 && (b[1]! & 0x80) === 0) b = b.subarray(1);
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return tlv(0x02, b);
}
function time(d: Date): Buffer {
  const iso = d.toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z'; // YYYYMMDDHHMMSSZ
  const year = d.getUTCFullYear();
  return year >= 1950 && year < 2050 ? tlv(0x17, Buffer.from(iso.slice(2), 'ascii')) : tlv(0x18, Buffer.from(iso, 'ascii'));
}
function name(cn: string): Buffer {
  return seq(set(seq(oid('2.5.4.3'), tlv(0x0c, Buffer.from(cn, 'utf8')))));
}
function ipBytes(ip: string): Buffer {
  if (net.isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  const [head = '', tail = ''] = ip.split('::');
  const h = head ? head.split(':') : [];
  const t = ip.includes('::') ? (tail ? tail.split(':') : []) : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export function selfSignedCert(opts: SelfSignedOptions = {}): SelfSignedCert {
  const names = opts.names?.length ? opts.names : ['localhost', '127.0.0.1'];
  const days = opts.days ?? 3650;
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const ecdsaSha256 = seq(oid('1.2.840.10045.4.3.2'));
  const now = Date.now();
  const notBefore = new Date(days < 0 ? now + (days - 1) * 86_400_000 : now - 3_600_000);
  const notAfter = new Date(now + days * 86_400_000);
  const san = seq(
    ...names.map((n) => (net.isIP(n) ? tlv(0x87, ipBytes(n)) : tlv(0x82, Buffer.from(n, 'ascii')))),
  );
  const extensions = tlv(
    0xa3,
    seq(
      seq(oid('2.5.29.17'), tlv(0x04, san)),
      seq(oid('2.5.29.19'), tlv(0x01, Buffer.from([0xff])), tlv(0x04, seq(...(opts.ca ? [tlv(0x01, Buffer.from([0xff]))] : [])))),
    ),
  );
  const subject = name(names[0]!);
  const tbs = seq(
    tlv(0xa0, integer(Buffer.from([2]))),
    integer(crypto.randomBytes(16)),
    ecdsaSha256,
    subject,
    seq(time(notBefore), time(notAfter)),
    subject,
    spki,
    extensions,
  );
  const signature = crypto.sign('sha256', tbs, { key: privateKey, dsaEncoding: 'der' });
  const der = seq(tbs, ecdsaSha256, tlv(0x03, Buffer.from([0]), signature));
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return {
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    cert: `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`,
    certSha256: crypto.createHash('sha256').update(der).digest('hex'),
    spkiSha256: crypto.createHash('sha256').update(spki).digest('hex'),
  };
}
