// The conversation of one message with one milter, in the protocol's order:
// negotiation, connect, HELO, MAIL, each RCPT, DATA, the headers, end of
// headers, the body in chunks, end of message. Any answer other than
// continue ends it early with that verdict (accept: the milter wants no
// more of this message). Macros go before the stage they belong to.
import { bracket, type MilterSession, type Modification, type Verdict } from './session';
import { Cmd } from './protocol';

export interface MilterMessage {
  /** The client: its name ("[address]" when unknown), address and port. */
  client: { name: string; address: string; port: number };
  helo: string;
  /** Without angle brackets; "" is the null sender. */
  sender: string;
  /** ESMTP parameters of MAIL FROM as "KEY=value". */
  senderArgs?: string[];
  recipients: readonly string[];
  /** Fields with their text after the colon (CRLF folds). */
  headers: Iterable<{ name: string; raw: string }>;
  /** The body (after the blank line), read afresh for each milter. */
  body: () => AsyncIterable<Buffer>;
  /** Sendmail macros per stage: C connect, H helo, M mail, R rcpt (per recipient), T data, N end of headers, E end of message. */
  macros?: (stage: string, recipient?: string) => Record<string, string | undefined> | undefined;
}

export async function converse(session: MilterSession, msg: MilterMessage, onModification: (m: Modification) => void | Promise<void>): Promise<Verdict> {
  const macros = async (stage: string, recipient?: string) => {
    const values = msg.macros?.(stage, recipient);
    if (values) await session.macros(stage, values);
  };
  await session.negotiate();
  const steps: Array<() => Promise<Verdict>> = [
    async () => (await macros(Cmd.CONNECT), session.connect(msg.client.name, msg.client.address, msg.client.port)),
    async () => (await macros(Cmd.HELO), session.helo(msg.helo)),
    async () => (await macros(Cmd.MAIL), session.mail([bracket(msg.sender), ...(msg.senderArgs ?? [])])),
    ...msg.recipients.map((r) => async () => (await macros(Cmd.RCPT, r), session.rcpt([bracket(r)]))),
    async () => (await macros(Cmd.DATA), session.data()),
  ];
  for (const step of steps) {
    const v = await step();
    if (v.kind !== 'continue') return v;
  }
  for (const h of msg.headers) {
    const v = await session.header(h.name, h.raw);
    if (v.kind !== 'continue') return v;
  }
  await macros(Cmd.EOH);
  const eoh = await session.eoh();
  if (eoh.kind !== 'continue') return eoh;
  for await (const chunk of msg.body()) {
    const v = await session.body(chunk);
    if (v.kind === 'skip') break;
    if (v.kind !== 'continue') return v;
  }
  await macros(Cmd.BODYEOB);
  return session.endOfMessage(onModification);
}
