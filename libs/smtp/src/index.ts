// @tern/smtp: a strict ESMTP server engine (RFC 5321 with PIPELINING, SIZE,
// 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, BINARYMIME, DSN,
// STARTTLS, AUTH PLAIN/LOGIN, REQUIRETLS) and the address/parameter parsers
// other services reuse. See README.md for the hook API.
export { SmtpServer } from './server';
export { COUNTED_VERBS, SmtpStats, type CountedVerb } from './stats';
export { SmtpDataError } from './data';
export {
  ConnectionLimiter,
  DEFAULT_LIMITS,
  type AuthRequest,
  type AuthResult,
  type Envelope,
  type MailFrom,
  type RcptTo,
  type SmtpHooks,
  type SmtpLimits,
  type SmtpLogger,
  type SmtpServerOptions,
  type SmtpSession,
  type TlsInfo,
  type TlsOptions,
} from './types';
export { formatReply, isPositive, normalizeReply, parseReplyLine, reply, Replies, replyToString, type Reply } from './reply';
export {
  detectRoutingTrick,
  parseAddress,
  parseDomain,
  parsePath,
  splitAddress,
  domainOf,
  type AddressOptions,
  type AddressResult,
  type ParsedAddress,
  type PathResult,
  type RoutingTrick,
} from './address';
export {
  decodeXtext,
  parseMailParams,
  parseRcptParams,
  type BodyType,
  type DsnNotify,
  type DsnRet,
  type MailParams,
  type Orcpt,
  type RcptParams,
} from './params';
export { BodyDecoder, type BodyLimits, type Violation } from './body';
export { CidrSet, normalizeIp, parseProxyHeader, type ProxyParse } from './proxy';
