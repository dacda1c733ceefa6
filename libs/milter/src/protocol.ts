// The milter protocol's constants (Sendmail's libmilter mfdef.h, version 6,
// which Postfix speaks too): command and reply codes, the action flags a
// milter may ask for, and the protocol flags that skip stages or replies.

/** The protocol version this client offers (Sendmail 8.14+, Postfix 2.6+). */
export const MILTER_VERSION = 6;
/** The oldest milter version it accepts (libmilter's own minimum). */
export const MILTER_MIN_VERSION = 2;
/** Body chunks are at most this many octets (libmilter's MILTER_CHUNK_SIZE). */
export const MILTER_CHUNK_SIZE = 65535;

/** MTA -> milter. */
export const Cmd = {
  ABORT: 'A',
  BODY: 'B',
  CONNECT: 'C',
  MACRO: 'D',
  BODYEOB: 'E',
  HELO: 'H',
  QUIT_NC: 'K',
  HEADER: 'L',
  MAIL: 'M',
  EOH: 'N',
  OPTNEG: 'O',
  QUIT: 'Q',
  RCPT: 'R',
  DATA: 'T',
  UNKNOWN: 'U',
} as const;

/** Milter -> MTA. */
export const Reply = {
  ADDRCPT: '+',
  DELRCPT: '-',
  ADDRCPT_PAR: '2',
  SHUTDOWN: '4',
  ACCEPT: 'a',
  REPLBODY: 'b',
  CONTINUE: 'c',
  DISCARD: 'd',
  CHGFROM: 'e',
  CONN_FAIL: 'f',
  ADDHEADER: 'h',
  INSHEADER: 'i',
  SETSYMLIST: 'l',
  CHGHEADER: 'm',
  PROGRESS: 'p',
  QUARANTINE: 'q',
  REJECT: 'r',
  SKIP: 's',
  TEMPFAIL: 't',
  REPLYCODE: 'y',
  OPTNEG: 'O',
} as const;

/** Actions (SMFIF_*): what a milter may do at the end of a message. */
export const Action = {
  ADDHDRS: 0x01,
  CHGBODY: 0x02,
  ADDRCPT: 0x04,
  DELRCPT: 0x08,
  CHGHDRS: 0x10,
  QUARANTINE: 0x20,
  CHGFROM: 0x40,
  ADDRCPT_PAR: 0x80,
  SETSYMLIST: 0x100,
} as const;
/** Every action this client carries out. */
export const ALL_ACTIONS = 0x1ff;

/** Protocol flags (SMFIP_*): stages a milter does not want, replies it will not send. */
export const Proto = {
  NOCONNECT: 0x1,
  NOHELO: 0x2,
  NOMAIL: 0x4,
  NORCPT: 0x8,
  NOBODY: 0x10,
  NOHDRS: 0x20,
  NOEOH: 0x40,
  NR_HDR: 0x80,
  NOUNKNOWN: 0x100,
  NODATA: 0x200,
  SKIP: 0x400,
  RCPT_REJ: 0x800,
  NR_CONN: 0x1000,
  NR_HELO: 0x2000,
  NR_MAIL: 0x4000,
  NR_RCPT: 0x8000,
  NR_DATA: 0x10000,
  NR_UNKN: 0x20000,
  NR_EOH: 0x40000,
  NR_BODY: 0x80000,
  HDR_LEADSPC: 0x100000,
  MDS_256K: 0x10000000,
  MDS_1M: 0x20000000,
} as const;

/**
 * What this client offers: every skip and no-reply flag, SKIP and
 * HDR_LEADSPC. Not RCPT_REJ: the client sends only accepted recipients.
 */
export const OFFERED_PROTOCOL = 0x1fffff & ~Proto.RCPT_REJ;
/** Bigger data sizes a milter may mention; this client never sends more than 64 KiB at once, so they are ignored. */
export const IGNORED_PROTOCOL = Proto.MDS_256K | Proto.MDS_1M;

/** The no-reply flag of each stage command. */
export const NO_REPLY: Record<string, number> = {
  [Cmd.CONNECT]: Proto.NR_CONN,
  [Cmd.HELO]: Proto.NR_HELO,
  [Cmd.MAIL]: Proto.NR_MAIL,
  [Cmd.RCPT]: Proto.NR_RCPT,
  [Cmd.DATA]: Proto.NR_DATA,
  [Cmd.HEADER]: Proto.NR_HDR,
  [Cmd.EOH]: Proto.NR_EOH,
  [Cmd.BODY]: Proto.NR_BODY,
  [Cmd.UNKNOWN]: Proto.NR_UNKN,
};

/** The skip flag of each stage command. */
export const NO_STAGE: Record<string, number> = {
  [Cmd.CONNECT]: Proto.NOCONNECT,
  [Cmd.HELO]: Proto.NOHELO,
  [Cmd.MAIL]: Proto.NOMAIL,
  [Cmd.RCPT]: Proto.NORCPT,
  [Cmd.DATA]: Proto.NODATA,
  [Cmd.HEADER]: Proto.NOHDRS,
  [Cmd.EOH]: Proto.NOEOH,
  [Cmd.BODY]: Proto.NOBODY,
  [Cmd.UNKNOWN]: Proto.NOUNKNOWN,
};
