// An esbuild plugin for scripts/bundle.mjs: marks the gRPC client
// constructors of libs/proto's generated code pure. ts-proto writes
// `export const XClient = makeGenericClientConstructor(XService, ...)`, a
// top-level call esbuild must keep (it may have side effects), and with it
// the service definition and every message codec it names: each service
// evaluated every contract's generated code (77-85% of its bundle), 2 MB of
// heap. Marked pure, a client no code of the service uses goes, with what
// only it needed (the queue and webhooks lose about 400 KB of bundle).
import fs from 'node:fs';

export const pureClients = {
  name: 'pure-clients',
  setup(build) {
    build.onLoad({ filter: /[\\/]libs[\\/]proto[\\/]src[\\/]gen[\\/].*\.ts$/ }, (args) => ({
      contents: fs.readFileSync(args.path, 'utf8').replace(/= makeGenericClientConstructor\(/g, '= /* @__PURE__ */ makeGenericClientConstructor('),
      loader: 'ts',
    }));
  },
};
