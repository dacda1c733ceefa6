/* global process, console */
// Makes the JSON Schemas kubeconform validates against, offline, from
// specifications that arrive as Go modules (scripts/chart-check.sh fetches
// them with `go mod download`; no schema is downloaded from the web):
//
// - Kubernetes: the OpenAPI v3 documents published in the k8s.io/kubernetes
//   module (api/openapi-spec/v3/*.json), the same documents an API server of
//   that release serves;
// - CRDs (ServiceMonitor, ScaledObject, Certificate): the CustomResourceDefinition
//   YAML shipped in the operators' own modules (openAPIV3Schema of each version).
//
// Each needed kind becomes one standalone, strict schema: every $ref inlined,
// and additionalProperties: false on every object that lists its properties
// (so a misspelled or misplaced field fails, like `kubectl --validate=strict`),
// kind and apiVersion pinned. Only the kinds the given manifests use are
// written, to <out>/<group or v1>/<kind>_<version>.json, which is the
// kubeconform location template
//   <out>/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json
// A kind found in no specification is an error: nothing is skipped silently.
//
// Usage: node kube-schemas.mjs --openapi DIR [--crd FILE]... --out DIR MANIFEST...
import fs from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';

const args = process.argv.slice(2);
const openapiDirs = [];
const crdFiles = [];
const manifests = [];
let outDir;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--openapi') openapiDirs.push(args[++i]);
  else if (a === '--crd') crdFiles.push(args[++i]);
  else if (a === '--out') outDir = args[++i];
  else manifests.push(a);
}
if (!outDir || openapiDirs.length === 0 || manifests.length === 0) {
  console.error('usage: kube-schemas.mjs --openapi DIR [--crd FILE]... --out DIR MANIFEST...');
  process.exit(64);
}

// ---- what is needed -------------------------------------------------------
const needed = new Map(); // "apiVersion|kind" -> {apiVersion, kind}
for (const file of manifests) {
  for (const doc of parseAllDocuments(fs.readFileSync(file, 'utf8'))) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0].message}`);
    const obj = doc.toJSON();
    if (!obj || typeof obj !== 'object') continue;
    if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') {
      console.error(`kube-schemas: ${file}: an object without apiVersion/kind: ${JSON.stringify(obj).slice(0, 200)}`);
      process.exit(1);
    }
    needed.set(`${obj.apiVersion}|${obj.kind}`, { apiVersion: obj.apiVersion, kind: obj.kind });
  }
}

// ---- sources ----------------------------------------------------------------
/** "apiVersion|kind" -> {schema, refs} */
const sources = new Map();
const components = {};
for (const dir of openapiDirs) {
  for (const name of fs.readdirSync(dir).filter((n) => n.endsWith('.json')).sort()) {
    const spec = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
    Object.assign(components, spec.components?.schemas ?? {});
  }
}
for (const [name, schema] of Object.entries(components)) {
  for (const gvk of schema['x-kubernetes-group-version-kind'] ?? []) {
    const apiVersion = gvk.group ? `${gvk.group}/${gvk.version}` : gvk.version;
    const key = `${apiVersion}|${gvk.kind}`;
    // Prefer the type of the group's own package (io.k8s.api.<group>...) when a GVK appears twice.
    if (!sources.has(key) || name.startsWith('io.k8s.api.')) sources.set(key, { schema: { $ref: `#/components/schemas/${name}` } });
  }
}
for (const file of crdFiles) {
  for (const doc of parseAllDocuments(fs.readFileSync(file, 'utf8'))) {
    const crd = doc.toJSON();
    if (crd?.kind !== 'CustomResourceDefinition') continue;
    for (const v of crd.spec.versions) {
      const schema = v.schema?.openAPIV3Schema;
      if (schema) sources.set(`${crd.spec.group}/${v.name}|${crd.spec.names.kind}`, { schema });
    }
  }
}

// ---- conversion ------------------------------------------------------------
const DROP = new Set(['description', 'default', 'format', 'example', 'externalDocs', 'x-kubernetes-patch-strategy', 'x-kubernetes-patch-merge-key', 'x-kubernetes-list-type', 'x-kubernetes-list-map-keys', 'x-kubernetes-map-type', 'x-kubernetes-group-version-kind', 'x-kubernetes-unions', 'x-kubernetes-validations', 'x-kubernetes-embedded-resource', 'nullable']);

function convert(node, stack) {
  if (typeof node !== 'object' || node === null) return node;
  if (Array.isArray(node)) return node.map((n) => convert(n, stack));
  if (node.$ref) {
    const name = node.$ref.replace('#/components/schemas/', '');
    if (stack.includes(name)) return {}; // recursive type (e.g. JSONSchemaProps): accept anything below
    const target = components[name];
    if (!target) throw new Error(`unresolved $ref ${node.$ref}`);
    return convert(target, [...stack, name]);
  }
  // `allOf: [{$ref}]` is how OpenAPI v3 attaches a default or description to a reference.
  if (Array.isArray(node.allOf) && node.allOf.length === 1 && !node.properties && !node.type) {
    return convert(node.allOf[0], stack);
  }
  if (node['x-kubernetes-int-or-string']) return { anyOf: [{ type: 'integer' }, { type: 'string' }] };
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (DROP.has(k)) continue;
    if (k === 'properties') out.properties = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, convert(s, stack)]));
    else if (k === 'items' || k === 'additionalProperties' || k === 'not') out[k] = typeof v === 'object' ? convert(v, stack) : v;
    else if (k === 'allOf' || k === 'anyOf' || k === 'oneOf') out[k] = v.map((s) => convert(s, stack));
    else out[k] = v;
  }
  if (node.nullable && typeof out.type === 'string') out.type = [out.type, 'null'];
  const open = node['x-kubernetes-preserve-unknown-fields'] === true;
  if (out.properties && out.additionalProperties === undefined && !open) out.additionalProperties = false;
  return out;
}

let failed = false;
let written = 0;
for (const { apiVersion, kind } of needed.values()) {
  const src = sources.get(`${apiVersion}|${kind}`);
  if (!src) {
    console.error(`kube-schemas: no schema for ${apiVersion} ${kind} in the given specifications (a kind this Kubernetes release does not serve, or a CRD not listed)`);
    failed = true;
    continue;
  }
  const schema = convert(src.schema, []);
  schema.properties = { ...schema.properties, apiVersion: { type: 'string', enum: [apiVersion] }, kind: { type: 'string', enum: [kind] } };
  schema.required = [...new Set([...(schema.required ?? []), 'apiVersion', 'kind'])];
  const slash = apiVersion.indexOf('/');
  const group = slash < 0 ? apiVersion : apiVersion.slice(0, slash);
  const version = apiVersion.slice(slash + 1);
  const file = path.join(outDir, group, `${kind.toLowerCase()}_${version}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({ $schema: 'http://json-schema.org/draft-07/schema#', ...schema }));
  written++;
}
if (failed) process.exit(1);
console.log(`kube-schemas: ${written} schema(s) in ${outDir}`);
