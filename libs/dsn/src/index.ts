// @tern/dsn: RFC 3464 delivery status notifications (with RFC 3461 NOTIFY/RET
// rules, RFC 6522 multipart/report and RFC 6533 for SMTPUTF8 messages).
export { actionForKind, DSN_ACTIONS, isDsnAction, kindForAction, recipientsOwedReport, reportOwed, type DsnAction } from './notify';
export {
  isDeliveryStatusContentType,
  openOriginal,
  parseHeaderFields,
  type ByteSource,
  type OpenOriginalOptions,
  type OriginalMessage,
} from './original';
export {
  buildReport,
  NoReportError,
  recipientStatus,
  replyText,
  reportToBuffer,
  returnMode,
  whyNoReport,
  type NoReportReason,
  type Report,
  type ReportOptions,
  type ReturnMode,
  type ReturnPolicy,
} from './report';
export { isPrintableAscii, orcptParam, utf8AddrEncode, xtextDecode, xtextEncode } from './xtext';
export { rfc5322Date } from './format';
export { backsOffDestination, BOUNCE_CLASSES, classifyReply, isBounceClass, MAX_RULE_PATTERN, suppressesAddress, validateBounceRule, type BounceClass, type BounceRule, type ClassifiedReply } from './classify';
