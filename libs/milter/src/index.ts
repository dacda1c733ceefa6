export * from './protocol';
export { encode, PacketDecoder, cstrings, indexed, MilterError, MAX_PACKET, type Packet } from './codec';
export { MilterSession, parseMilterAddress, bracket, unbracket, type MilterTimeouts, type Verdict, type Modification, type Negotiated } from './session';
export { parseHeaderSection, serializeHeaders, applyHeaderChange, type HeaderField } from './headers';
export { parseReplyText, type MilterReply } from './reply';
export { converse, type MilterMessage } from './conversation';
