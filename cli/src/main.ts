// Entry point of the `tern` command (bin/tern.js loads it through tsx): runs
// the command line, prints a failure as one line on stderr, sets the exit code.
import { CommanderError } from '@commander-js/extra-typings';
import { DEFAULT_ADDR } from './client';
import { dkimKeyFileArgs } from './dkim';
import { describeError, EXIT } from './errors';
import { buildProgram, currentConnection, type Io } from './program';

export async function main(argv: string[], io: Io): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(dkimKeyFileArgs(argv));
    return EXIT.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander printed the message (or the help) already.
      return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    const conn = currentConnection() ?? { address: DEFAULT_ADDR, tokenSource: 'none', tls: false, deadlineMs: 15_000 };
    const failure = describeError(err, conn);
    // One line, whatever the cause looked like.
    io.stderr.write(`tern: ${failure.message.replace(/\s*\n\s*/g, ' ')}\n`);
    return failure.exitCode;
  }
}

// Node's deprecation notices are not the operator's concern (grpc-js sets a TLS
// server name to an IP address when --server is one: DEP0123).
process.noDeprecation = true;

void main(process.argv, {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
  cwd: process.cwd(),
  now: () => new Date(),
}).then((code) => {
  process.exitCode = code;
});
