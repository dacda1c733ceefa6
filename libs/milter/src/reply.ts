// A milter's own SMTP reply (SMFIR_REPLYCODE), e.g. "554 5.7.1 Gtube pattern"
// or a multi-line "550-5.7.1 first\r\n550 5.7.1 last", as code, enhanced
// status and text lines.

export interface MilterReply {
  code: number;
  enhanced?: string;
  text: string[];
}

export function parseReplyText(reply: string): MilterReply {
  const lines = reply.split(/\r?\n/).filter((l) => l !== '');
  const code = Number(reply.slice(0, 3));
  let enhanced: string | undefined;
  const text = lines.map((l) => {
    let rest = /^\d{3}[ -]?/.test(l) ? l.replace(/^\d{3}[ -]?/, '') : l;
    const e = /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/.exec(rest);
    if (e) {
      enhanced ??= e[1];
      rest = rest.slice(e[0].length);
    }
    return rest;
  });
  return enhanced ? { code, enhanced, text } : { code, text };
}
