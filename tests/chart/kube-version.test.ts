// Issue 26 item 13: nothing about the chart depends on the Kubernetes version
// built into the helm binary. A helm built without its version flags assumes
// Kubernetes v1.20, which the chart's kubeVersion refuses: install-helm must
// not adopt such a helm from PATH, and the chart tests name their version.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { CHART, helm, KUBE_VERSIONS, render, renderError, ROOT } from './render';

const scratch: string[] = [];
after(() => {
  for (const dir of scratch) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * A directory with `helm`: the real one, but (when `builtIn` is given)
 * assuming that Kubernetes version whenever `--kube-version` is not passed,
 * as a helm built without its version flags does (v1.20).
 */
function fakeHelm(builtIn?: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-fake-helm-'));
  scratch.push(dir);
  const script = builtIn
    ? `#!/usr/bin/env bash
case "$1" in
  template|lint|install|upgrade)
    for a in "$@"; do [[ "$a" == --kube-version* ]] && exec ${JSON.stringify(helm())} "$@"; done
    exec ${JSON.stringify(helm())} "$@" --kube-version ${builtIn} ;;
esac
exec ${JSON.stringify(helm())} "$@"
`
    : `#!/usr/bin/env bash\nexec ${JSON.stringify(helm())} "$@"\n`;
  fs.writeFileSync(path.join(dir, 'helm'), script, { mode: 0o755 });
  return dir;
}

/** scripts/install-helm.sh run in a copy of the repository's relevant parts, with `pathDir` first on PATH and no Go toolchain. */
function installHelmIn(pathDir: string): { code: number | null; out: string; bin: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-install-helm-'));
  scratch.push(root);
  fs.mkdirSync(path.join(root, 'scripts'));
  for (const script of ['install-helm.sh', 'lib.sh']) fs.copyFileSync(path.join(ROOT, 'scripts', script), path.join(root, 'scripts', script));
  fs.cpSync(CHART, path.join(root, 'charts/tern'), { recursive: true });
  const r = spawnSync('bash', [path.join(root, 'scripts/install-helm.sh')], {
    encoding: 'utf8',
    env: { PATH: `${pathDir}:/usr/bin:/bin`, HOME: root, TERN_GO: '' },
  });
  return { code: r.status, out: `${r.stdout}${r.stderr}`, bin: path.join(root, '.tern/bin/helm') };
}

test('install-helm does not adopt a helm from PATH that cannot render the chart (built-in Kubernetes v1.20)', () => {
  const r = installHelmIn(fakeHelm('1.20.0'));
  assert.equal(fs.existsSync(r.bin), false, `no .tern/bin/helm from the old helm; install-helm said: ${r.out}`);
  assert.notEqual(r.code, 0, 'without Go it cannot build the pinned helm either, and says so');
  assert.match(r.out, /cannot render charts\/tern/);
  assert.match(r.out, /no Go toolchain/);
});

test('install-helm adopts a helm from PATH that renders the chart', () => {
  const dir = fakeHelm();
  const r = installHelmIn(dir);
  assert.equal(r.code, 0, r.out);
  assert.equal(fs.realpathSync(r.bin), fs.realpathSync(path.join(dir, 'helm')));
});

test('the chart renders for the oldest Kubernetes release its kubeVersion allows and for the newest; older is refused', () => {
  const chart = parse(fs.readFileSync(path.join(CHART, 'Chart.yaml'), 'utf8')) as { kubeVersion: string };
  const min = /^>=\s*(\d+)\.(\d+)\./.exec(chart.kubeVersion);
  assert.ok(min, `Chart.yaml kubeVersion "${chart.kubeVersion}" is a lower bound`);
  assert.equal(KUBE_VERSIONS.oldest.split('.').slice(0, 2).join('.'), `${min[1]}.${min[2]}`, 'kube-versions.json oldest is the oldest minor Chart.yaml allows');
  for (const kubeVersion of [KUBE_VERSIONS.oldest, KUBE_VERSIONS.newest]) {
    // Seven Deployments; the alternatives turn webhooks off.
    for (const [files, deployments] of [[[], 7], [['charts/tern/ci/production-values.yaml'], 7], [['charts/tern/ci/alternatives-values.yaml'], 6]] as const) {
      assert.equal(render(undefined, { files: [...files], kubeVersion }).filter((o) => o.kind === 'Deployment').length, deployments, `${kubeVersion} ${files.join(' ')}`);
    }
  }
  assert.match(renderError({}, { kubeVersion: `${min[1]}.${Number(min[2]) - 1}.0` }), /kubeVersion/);
});

test('the chart tests pass whatever Kubernetes version the helm binary assumes', () => {
  // values.test.ts renders many value sets; with a helm that assumes v1.20 it
  // passes only if every render names its version.
  const dir = fakeHelm('1.20.0');
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=tap', path.join(ROOT, 'tests/chart/values.test.ts')], {
    encoding: 'utf8',
    cwd: ROOT,
    // Without NODE_TEST_CONTEXT: the child is a test run of its own, not a subtest of this one.
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_TEST_CONTEXT')), TERN_HELM: path.join(dir, 'helm') },
  });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`.slice(-3000));
  assert.match(r.stdout, /^# pass [1-9]/m);
  assert.match(r.stdout, /^# fail 0$/m);
});
