// One demo message through the local cluster (the last step of
// `npm run cluster -- up`): sent to the ingress Service, then waited for in
// the demo sink's directory.
//
//   node --import tsx scripts/cluster/demo-send.ts <smtp host> <port> <sink dir>
import fs from 'node:fs';
import path from 'node:path';
import nodemailer from 'nodemailer';

async function main(): Promise<void> {
  const [host, port, dir] = process.argv.slice(2);
  if (!host || !port || !dir) throw new Error('usage: demo-send.ts <smtp host> <port> <sink dir>');
  const messageId = `<cluster-demo-${Date.now()}@sender.test>`;
  const transport = nodemailer.createTransport({ host, port: Number(port), secure: false, ignoreTLS: true, name: 'demo.local' });
  const info = await transport.sendMail({
    envelope: { from: 'you@sender.test', to: ['someone@example.test'] },
    raw: `From: you@sender.test\r\nTo: someone@example.test\r\nSubject: Hello from Tern in Kubernetes\r\nMessage-ID: ${messageId}\r\n\r\nThis message went through the ingress, policy, queue and delivery pods.\r\n`,
  });
  process.stdout.write(`demo: ${info.response}\n`);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      if (!name.endsWith('.eml')) continue;
      const file = path.join(dir, name);
      if (fs.readFileSync(file, 'latin1').includes(messageId)) {
        process.stdout.write(`demo: delivered to the demo sink: ${file}\n`);
        return;
      }
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the demo message ${messageId} did not reach the demo sink (${dir}) within 60 s: kubectl -n tern logs deploy/tern-delivery`);
}

main().catch((err: Error) => {
  process.stderr.write(`demo: ${err.message}\n`);
  process.exit(1);
});
