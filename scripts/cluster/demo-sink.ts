// The local cluster's demo mail sink (started by `npm run cluster -- up`): an
// SMTP server on the host at the pods' bridge address that stands in for
// every `.test` domain's mail servers, as the demo sink of `npm start` does.
// Accepted messages are written to the given directory as <id>.eml and
// <id>.json; a local part starting with `permfail` gets 550 5.1.1 and one
// starting with `tempfail` 451, so bounces and retries can be tried.
//
//   node --import tsx scripts/cluster/demo-sink.ts <host> <port> <dir>
import fs from 'node:fs';
import { SmtpSink } from '@tern/devkit';

async function main(): Promise<void> {
  const [host, port, dir] = process.argv.slice(2);
  if (!host || !port || !dir) throw new Error('usage: demo-sink.ts <host> <port> <dir>');
  fs.mkdirSync(dir, { recursive: true });
  const sink = await new SmtpSink({ host, port: Number(port), hostname: 'mx.sink.test', dir }).start();
  process.stdout.write(`demo sink listening on ${sink.address}, messages in ${dir}\n`);
  const stop = () => void sink.close().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: Error) => {
  process.stderr.write(`demo sink: ${err.message}\n`);
  process.exit(1);
});
