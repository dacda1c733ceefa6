// Issue 21: the image `npm run image` builds (scripts/image.sh), checked
// through its real parts. The hook runs scripts/image.sh first, which rebuilds
// when anything that goes into the image changed and otherwise leaves the
// archive as it is (quick once the base is cached). Then the archive is read
// as an OCI layout (index, manifest, config, blob digests), its layers are
// unpacked into a rootfs, and `tern-entry` runs from that rootfs with chroot
// as the image's user, the way a container runtime would start it. Needs root
// (debootstrap, buildah, chroot).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const ENV_FILE = path.join(ROOT, '.tern/image/image.env');

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os: string; architecture: string };
}
interface ImageConfig {
  os: string;
  architecture: string;
  config: {
    User?: string;
    Env?: string[];
    Entrypoint?: string[];
    Cmd?: string[];
    WorkingDir?: string;
    ExposedPorts?: Record<string, object>;
    Labels?: Record<string, string>;
  };
}

let work = '';
let layout = '';
let rootfs = '';
const imageEnv = { TERN_IMAGE_REPOSITORY: '', TERN_IMAGE_TAG: '', TERN_IMAGE_ARCHIVE: '', TERN_IMAGE_ARCHIVE_FORMAT: '' };
let manifest: { config: Descriptor; layers: Descriptor[] };
let manifestRef: Descriptor;
let config: ImageConfig;

function blobPath(digest: string): string {
  const [alg, hex] = digest.split(':');
  assert.ok(alg && hex, `digest ${digest}`);
  return path.join(layout, 'blobs', alg, hex);
}
function readJson<T>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}
function sha256File(file: string): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return `sha256:${hash.digest('hex')}`;
}
function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** Applies one layer to rootfs: whiteouts first (OCI image spec, layer.md), then the files. */
function applyLayer(blob: string): void {
  const entries = run('tar', ['-tf', blob]).split('\n').filter(Boolean);
  for (const e of entries) {
    const name = e.replace(/^\.\//, '').replace(/\/$/, '');
    const base = path.basename(name);
    if (base === '.wh..wh..opq') {
      const dir = path.join(rootfs, path.dirname(name));
      if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    } else if (base.startsWith('.wh.')) {
      fs.rmSync(path.join(rootfs, path.dirname(name), base.slice(4)), { recursive: true, force: true });
    }
  }
  run('tar', ['-xf', blob, '-C', rootfs, '--numeric-owner', '--same-permissions']);
  for (const e of entries) {
    const name = e.replace(/^\.\//, '').replace(/\/$/, '');
    if (path.basename(name).startsWith('.wh.')) fs.rmSync(path.join(rootfs, name), { force: true });
  }
}

/** argv that starts the image's entrypoint (+ args, else its Cmd) in rootfs as its User, in its WorkingDir, with its Env only. */
function imageArgv(args: string[] | undefined, env: Record<string, string> = {}): string[] {
  const c = config.config;
  const extra = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  return [
    `--userspec=${c.User}`,
    rootfs,
    'env',
    '-i',
    ...(c.Env ?? []),
    ...extra,
    'sh',
    '-c',
    'cd "$0" && exec "$@"',
    c.WorkingDir ?? '/',
    ...(c.Entrypoint ?? []),
    ...(args ?? c.Cmd ?? []),
  ];
}
function inImage(args: string[] | undefined, env: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync('chroot', imageArgv(args, env), { encoding: 'utf8', timeout: 60_000 });
}
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}
function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.setTimeout(2_000, () => req.destroy(new Error('timeout')));
  });
}

before(
  () => {
    assert.equal(process.getuid?.(), 0, 'the image tests need root: scripts/image.sh uses debootstrap and buildah, the tests chroot');
    const build = spawnSync('bash', [path.join(ROOT, 'scripts/image.sh')], {
      cwd: ROOT,
      encoding: 'utf8',
      maxBuffer: 64 << 20,
      timeout: 20 * 60_000,
    });
    assert.equal(build.status, 0, `scripts/image.sh failed:\n${(build.stdout + build.stderr).slice(-4000)}`);
    const written = new Map(
      fs
        .readFileSync(ENV_FILE, 'utf8')
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    for (const key of Object.keys(imageEnv) as Array<keyof typeof imageEnv>) {
      const value = written.get(key);
      assert.ok(value, `${ENV_FILE} has no ${key}`);
      imageEnv[key] = value;
    }
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-image-test-'));
    layout = path.join(work, 'layout');
    rootfs = path.join(work, 'rootfs');
    fs.mkdirSync(layout);
    fs.mkdirSync(rootfs);
    run('tar', ['-xf', imageEnv.TERN_IMAGE_ARCHIVE, '-C', layout]);
    const index = readJson<{ manifests: Descriptor[] }>(path.join(layout, 'index.json'));
    // Follow nested indexes (a docker save from the containerd store) to the first linux manifest.
    const linux = (ds: Descriptor[]) => ds.find((d) => !d.platform || d.platform.os === 'linux') ?? ds[0];
    const top = linux(index.manifests);
    assert.ok(top, 'index.json lists no manifest');
    manifestRef = top;
    let ref = top;
    while (/index|manifest\.list/.test(ref.mediaType)) {
      const inner = linux(readJson<{ manifests: Descriptor[] }>(blobPath(ref.digest)).manifests);
      assert.ok(inner, `index ${ref.digest} lists no manifest`);
      ref = inner;
    }
    manifest = readJson(blobPath(ref.digest));
    config = readJson(blobPath(manifest.config.digest));
    for (const layer of manifest.layers) applyLayer(blobPath(layer.digest));
  },
  { timeout: 25 * 60_000 },
);

after(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('image.env names the archive, a tern image tagged with the chart appVersion plus a content hash', () => {
  const appVersion = /^appVersion:\s*"?([^"\s]+)"?\s*$/m.exec(fs.readFileSync(path.join(ROOT, 'charts/tern/Chart.yaml'), 'utf8'))?.[1];
  assert.ok(appVersion);
  assert.equal(imageEnv.TERN_IMAGE_REPOSITORY, process.env.TERN_IMAGE_REPOSITORY ?? 'tern.local/tern');
  assert.match(imageEnv.TERN_IMAGE_TAG, new RegExp(`^${appVersion.replaceAll('.', '\\.')}-[0-9a-f]{12}$`));
  assert.ok(fs.statSync(imageEnv.TERN_IMAGE_ARCHIVE).size > 0);
  assert.equal(fs.readFileSync(path.join(layout, 'oci-layout'), 'utf8').includes('"imageLayoutVersion"'), true);
  if (imageEnv.TERN_IMAGE_ARCHIVE_FORMAT === 'oci-archive') {
    assert.equal(manifestRef.annotations?.['org.opencontainers.image.ref.name'], `${imageEnv.TERN_IMAGE_REPOSITORY}:${imageEnv.TERN_IMAGE_TAG}`);
  }
});

test('every blob the manifest names is there and matches its digest and size', () => {
  for (const d of [manifest.config, ...manifest.layers]) {
    const file = blobPath(d.digest);
    assert.equal(fs.statSync(file).size, d.size, `${d.digest} size`);
    assert.equal(sha256File(file), d.digest);
  }
  assert.ok(manifest.layers.length >= 1);
});

test("the config runs tern-entry as 10001:10001 in /app, NODE_ENV=production, the Dockerfile's ports", () => {
  const c = config.config;
  assert.equal(config.os, 'linux');
  assert.equal(c.User, '10001:10001');
  assert.deepEqual(c.Entrypoint, ['tern-entry']);
  assert.deepEqual(c.Cmd, ['--help']);
  assert.equal(c.WorkingDir, '/app');
  assert.ok(c.Env?.includes('NODE_ENV=production'), `Env: ${c.Env?.join(' ')}`);
  assert.ok(c.Env?.some((e) => e.startsWith('PATH=') && e.split(':').includes('/usr/local/bin')));
  const expose = /^EXPOSE\s+(.+)$/m.exec(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'))?.[1]?.trim().split(/\s+/);
  assert.ok(expose);
  assert.deepEqual(Object.keys(c.ExposedPorts ?? {}).map((p) => p.replace(/\/tcp$/, '')).sort(), [...expose].sort());
});

test('the rootfs: user tern 10001, tern-entry is scripts/image/tern-entry, @tern links resolve inside /app, no sources', () => {
  assert.match(fs.readFileSync(path.join(rootfs, 'etc/passwd'), 'utf8'), /^tern:x:10001:10001:/m);
  assert.match(fs.readFileSync(path.join(rootfs, 'etc/group'), 'utf8'), /^tern:x:10001:/m);
  const entry = path.join(rootfs, 'usr/local/bin/tern-entry');
  assert.equal(fs.readFileSync(entry, 'utf8'), fs.readFileSync(path.join(ROOT, 'scripts/image/tern-entry'), 'utf8'));
  assert.equal(fs.statSync(entry).mode & 0o777, 0o755);
  const app = path.join(rootfs, 'app');
  for (const s of ['ingress', 'policy', 'queue', 'delivery', 'bounce', 'webhooks', 'admin']) {
    assert.ok(fs.existsSync(path.join(app, 'services', s, 'dist/main.js')), `services/${s}/dist/main.js`);
    assert.ok(!fs.existsSync(path.join(app, 'services', s, 'src')), `services/${s}/src must not be in the image`);
  }
  assert.ok(fs.existsSync(path.join(app, 'libs/db/dist/migrate.js')));
  assert.ok(fs.existsSync(path.join(app, 'cli/dist/tern.js')));
  // The migrate command (the chart's hook Job) applies every owner's migrations (libs/db migrate-main.ts OWNERS).
  for (const owner of ['policy', 'queue', 'webhooks']) {
    assert.ok(fs.readdirSync(path.join(app, 'services', owner, 'migrations')).some((f) => f.endsWith('.sql')), `services/${owner}/migrations`);
  }
  // Production dependencies only: the build, lint and codegen tools (root
  // devDependencies no workspace needs at run time) are not there. (esbuild
  // is: the CLI depends on tsx.)
  const rootDev = Object.keys(readJson<{ devDependencies: Record<string, string> }>(path.join(ROOT, 'package.json')).devDependencies);
  for (const dev of ['typescript', 'turbo', 'eslint', 'typescript-eslint', '@bufbuild/buf', 'ts-proto', 'node']) {
    assert.ok(rootDev.includes(dev), `${dev} is no longer a root devDependency; update this list`);
    assert.ok(!fs.existsSync(path.join(app, 'node_modules', dev)), `${dev} (a devDependency) is in the image`);
  }
  const links = fs.readdirSync(path.join(app, 'node_modules/@tern'));
  assert.ok(links.includes('telemetry') && links.includes('queue'), `@tern: ${links.join(' ')}`);
  for (const name of links) {
    const link = path.join(app, 'node_modules/@tern', name);
    const target = path.resolve(path.dirname(link), fs.readlinkSync(link));
    assert.ok(target.startsWith(app + path.sep), `@tern/${name} -> ${fs.readlinkSync(link)} leaves /app`);
    assert.ok(fs.existsSync(path.join(target, 'package.json')), `@tern/${name} -> ${fs.readlinkSync(link)} dangles`);
  }
});

test('node in the image is the Node 24 the repo pins (node@24)', () => {
  const node = spawnSync('chroot', [`--userspec=${config.config.User}`, rootfs, '/usr/local/bin/node', '--version'], { encoding: 'utf8' });
  assert.equal(node.status, 0, node.stderr);
  const pinned = readJson<{ version: string }>(path.join(ROOT, 'node_modules/node/package.json')).version;
  assert.equal(node.stdout.trim(), `v${pinned}`);
  assert.match(node.stdout, /^v24\./);
});

test('tern-entry as the image user: the default command prints usage and exits 0; an unknown name exits 64', () => {
  const help = inImage(undefined);
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /^usage: tern-entry <ingress\|policy\|queue\|delivery\|bounce\|webhooks\|admin\|migrate\|tern>/);
  const bogus = inImage(['bogus']);
  assert.equal(bogus.status, 64);
  assert.match(bogus.stderr, /unknown service "bogus"/);
  const id = spawnSync('chroot', [`--userspec=${config.config.User}`, rootfs, 'id', '-u'], { encoding: 'utf8' });
  assert.equal(id.stdout.trim(), '10001');
});

test('services and migrate start from the image and stop on a missing setting, naming it', () => {
  for (const [name, variable] of [
    ['policy', 'TERN_DATABASE_URL'],
    ['queue', 'TERN_DATABASE_URL'],
    ['delivery', 'TERN_NATS_URL'],
    ['webhooks', 'TERN_DATABASE_URL'],
    ['migrate', 'TERN_DATABASE_URL'],
  ] as const) {
    const r = inImage([name]);
    assert.notEqual(r.status, 0, `${name} started without ${variable}`);
    assert.notEqual(r.status, 64, `${name}: tern-entry did not know it`);
    assert.match(r.stderr, new RegExp(variable), `${name} stderr: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /Cannot find module|ERR_MODULE_NOT_FOUND/, `${name}: ${r.stderr}`);
  }
});

test('the tern CLI runs from the image', () => {
  const r = inImage(['tern', '--help']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Usage: tern/);
});

test('admin starts from the image as uid 10001, answers /healthz and /metrics, and stops cleanly on SIGTERM', async () => {
  const grpcPort = await freePort();
  const metricsPort = await freePort();
  const child = spawn(
    'chroot',
    imageArgv(['admin'], {
      TERN_QUEUE_ADDR: '127.0.0.1:1',
      TERN_POLICY_ADDR: '127.0.0.1:1',
      TERN_ADMIN_TOKENS: 'ops:image-test-token-0123456789',
      TERN_GRPC_LISTEN: `127.0.0.1:${grpcPort}`,
      TERN_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
    }),
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 30_000;
    let health: { status: number; body: string } | undefined;
    while (Date.now() < deadline && child.exitCode === null) {
      health = await httpGet(`http://127.0.0.1:${metricsPort}/healthz`).catch(() => undefined);
      if (health) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(health?.status, 200, `no /healthz; output:\n${output}`);
    const metrics = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`);
    assert.match(metrics.body, /service_name="tern-admin"/);
    // tern-entry execs node: the process chroot started is node itself, as 10001.
    const argv = fs.readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0');
    assert.equal(argv[0], 'node');
    assert.ok(argv.includes('/app/services/admin/dist/main.js'), argv.join(' '));
    assert.match(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'), /^Uid:\s+10001\s/m);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, `exit after SIGTERM; output:\n${output}`);
    assert.match(output, /"msg":"admin stopped"/);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});
