// scripts/pure-clients.mjs: in the services' bundles a generated gRPC client
// that no code uses is left out, with the service definition and codecs
// only it needed; a client that is used is there and works.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';
import * as grpc from '@grpc/grpc-js';
import { repoRoot } from '@tern/devkit';

// In ts-proto's shape: a codec, a service definition, a client per service.
const generated = (name: string) => `
export const ${name}Request = { encode: (v: string) => Buffer.from('${name}:' + v), decode: (b: Buffer) => b.toString() };
export const ${name}Service = {
  call: { path: '/test.${name}/Call', requestStream: false, responseStream: false, requestSerialize: (v: string) => ${name}Request.encode(v), requestDeserialize: (b: Buffer) => ${name}Request.decode(b), responseSerialize: (v: string) => ${name}Request.encode(v), responseDeserialize: (b: Buffer) => ${name}Request.decode(b) },
} as const;
export const ${name}Client = makeGenericClientConstructor(${name}Service as never, 'test.${name}');
`;

async function bundle(plugins: Plugin[]): Promise<string> {
  // Under the repository, so that the bundle finds node_modules.
  fs.mkdirSync(path.join(repoRoot(), '.tern'), { recursive: true });
  const dir = fs.mkdtempSync(path.join(repoRoot(), '.tern', 'pure-clients-test-'));
  try {
    fs.mkdirSync(path.join(dir, 'libs/proto/src/gen'), { recursive: true });
    fs.writeFileSync(
      path.join(dir, 'libs/proto/src/gen/contracts.ts'),
      `import { makeGenericClientConstructor } from '@grpc/grpc-js';\n${generated('Used')}${generated('Unused')}`,
    );
    fs.writeFileSync(path.join(dir, 'main.ts'), "export { UsedClient } from './libs/proto/src/gen/contracts';\n");
    const out = path.join(dir, 'main.js');
    await build({ entryPoints: [path.join(dir, 'main.ts')], outfile: out, bundle: true, platform: 'node', format: 'cjs', external: ['@grpc/*'], plugins, logLevel: 'silent' });
    const code = fs.readFileSync(out, 'utf8');
    // The client that is kept still constructs.
    const { UsedClient } = createRequire(__filename)(out) as { UsedClient: new (address: string, creds: grpc.ChannelCredentials) => grpc.Client };
    new UsedClient('127.0.0.1:1', grpc.credentials.createInsecure()).close();
    return code;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('an unused generated client is left out with its service and codecs; the used one works', async () => {
  const { pureClients } = (await import(pathToFileURL(path.join(repoRoot(), 'scripts/pure-clients.mjs')).href)) as { pureClients: Plugin };
  const code = await bundle([pureClients]);
  assert.match(code, /UsedClient/);
  assert.doesNotMatch(code, /Unused/);
});

test('without the plugin (what it replaces) the unused client and everything it names stay', async () => {
  assert.match(await bundle([]), /UnusedClient[\s\S]*UnusedService|UnusedService[\s\S]*UnusedClient/);
});
