// Passwords for `tern user add`: from stdin (--password-stdin) or typed at a
// prompt with echo off. Never from argv, where `ps` and shell history see it.
import { UsageError } from './requests';

export async function readStdin(stdin: NodeJS.ReadableStream = process.stdin): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(chunks).toString('utf8');
}

/** The password piped in: one line, the trailing newline dropped. */
export async function passwordFromStdin(stdin: NodeJS.ReadableStream = process.stdin): Promise<string> {
  const text = (await readStdin(stdin)).replace(/\r?\n$/, '');
  if (text === '') throw new UsageError('--password-stdin: stdin was empty');
  if (/[\r\n]/.test(text)) throw new UsageError('--password-stdin: expected one line');
  return text;
}

/** Reads a line from the terminal without echoing it. */
function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  const stderr = process.stderr;
  return new Promise((resolve, reject) => {
    stderr.write(question);
    let value = '';
    stdin.setRawMode(true);
    stdin.resume();
    stdin.setEncoding('utf8');
    const done = (err?: Error) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.removeListener('data', onData);
      stderr.write('\n');
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (s: string) => {
      for (const ch of s) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003') return done(new UsageError('cancelled'));
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else value += ch;
      }
    };
    stdin.on('data', onData);
  });
}

export async function passwordFromPrompt(user: string): Promise<string> {
  if (!process.stdin.isTTY) {
    throw new UsageError('no terminal to ask for the password: pipe it with --password-stdin, or --keep-password to leave it unchanged');
  }
  const first = await promptHidden(`Password for ${user}: `);
  if (first === '') throw new UsageError('empty password');
  const second = await promptHidden('Again: ');
  if (first !== second) throw new UsageError('the passwords did not match');
  return first;
}
