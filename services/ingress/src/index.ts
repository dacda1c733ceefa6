// @tern/ingress: the SMTP front door (MX 2525, submission 2587, submissions 2465).
export { createApp, type App, type AppDeps } from './app';
export { loadConfig, type Config } from './config';
export { decisionReply } from './policy-check';
export { sessionInfo, toProtoEnvelope, toProtoRecipients } from './envelope';
export { IngressReplies } from './replies';
export { HeaderScanner, protocolName, receivedHeader } from './headers';
