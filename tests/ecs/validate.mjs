// Checks JSON-lines files of ECS documents against the field definitions that the pinned
// @elastic/ecs package ships (its EcsFlat table: every field with its type, array-ness and
// allowed values). Every field of every document must be an ECS field of the right type, or
// sit under the custom top-level `enforcer` object; the categorization fields must hold
// allowed values, and each `event.type` must be one that ECS expects for one of the document's
// `event.category` values. Prints each problem and exits 1, or prints a summary and exits 0.
//
// Usage: node validate.mjs FILE.jsonl...

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';

const { EcsFlat, EcsVersion } = createRequire(import.meta.url)('@elastic/ecs');

/** The one top-level object ECS leaves to us (custom fields outside its namespaces). */
const CUSTOM_ROOT = 'enforcer';
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const STRING_TYPES = new Set(['keyword', 'constant_keyword', 'wildcard', 'match_only_text', 'text']);
const INTEGER_TYPES = new Set(['long', 'integer', 'short', 'byte']);
const FLOAT_TYPES = new Set(['float', 'double', 'half_float', 'scaled_float']);

/** ECS gives `network.direction`'s values only in its description, quoted: read them there. */
const networkDirections = new Set(
  [...EcsFlat['network.direction'].description.matchAll(/"([a-z]+)"/g)].map((match) => match[1]),
);

/** Why `value` is not of ECS type `type`, or null when it is. */
function typeProblem(type, value) {
  if (STRING_TYPES.has(type)) {
    return typeof value === 'string' ? null : 'is not a string';
  }
  if (INTEGER_TYPES.has(type)) {
    return Number.isSafeInteger(value) ? null : 'is not an integer';
  }
  if (FLOAT_TYPES.has(type)) {
    return typeof value === 'number' ? null : 'is not a number';
  }
  switch (type) {
    case 'boolean':
      return typeof value === 'boolean' ? null : 'is not a boolean';
    case 'ip':
      return typeof value === 'string' && isIP(value) !== 0 ? null : 'is not an IP address';
    case 'date':
      return typeof value === 'string' && RFC3339.test(value) && !Number.isNaN(Date.parse(value))
        ? null
        : 'is not an RFC 3339 date';
    default:
      return `has type ${type}, which this validator does not check`;
  }
}

/** The problems of one field (a leaf or an ECS object field) at `path`. */
function fieldProblems(path, value) {
  const field = EcsFlat[path];
  const problems = [];
  if (field.type === 'object' || field.type === 'flattened') {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return [`${path} is not an object`];
    }
    if (field.object_type) {
      for (const [key, inner] of Object.entries(value)) {
        const problem = typeProblem(field.object_type, inner);
        if (problem) problems.push(`${path}.${key} ${problem}`);
      }
    }
    return problems;
  }
  const isArray = field.normalize.includes('array');
  if (Array.isArray(value) && !isArray) {
    return [`${path} is an array, but ECS defines it as a single value`];
  }
  const values = Array.isArray(value) ? value : [value];
  if (values.length === 0) problems.push(`${path} is an empty array`);
  const allowed = field.allowed_values?.map((entry) => entry.name);
  for (const item of values) {
    const problem = typeProblem(field.type, item);
    if (problem) problems.push(`${path} ${problem}: ${JSON.stringify(item)}`);
    if (allowed && !allowed.includes(item)) {
      problems.push(`${path} value ${JSON.stringify(item)} is not one of ECS's: ${allowed.join(', ')}`);
    }
    if (path === 'network.direction' && !networkDirections.has(item)) {
      problems.push(`network.direction value ${JSON.stringify(item)} is not one of ECS's: ${[...networkDirections].join(', ')}`);
    }
  }
  return problems;
}

/** Walks `object` (a document or a part at `prefix`), collecting problems and field paths. */
function walk(object, prefix, problems, seen) {
  for (const [key, value] of Object.entries(object)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (path === CUSTOM_ROOT) {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        problems.push(`${CUSTOM_ROOT} is not an object`);
      }
      continue;
    }
    if (value === null) {
      problems.push(`${path} is null (leave an unknown field out instead)`);
    } else if (path in EcsFlat) {
      seen.add(path);
      problems.push(...fieldProblems(path, value));
    } else if (typeof value === 'object' && !Array.isArray(value)
      && Object.keys(EcsFlat).some((name) => name.startsWith(`${path}.`))) {
      walk(value, path, problems, seen);
    } else {
      problems.push(`${path} is not an ECS ${EcsVersion} field`);
    }
  }
}

/** Every problem of one document. */
function documentProblems(document) {
  if (document === null || typeof document !== 'object' || Array.isArray(document)) {
    return ['the document is not a JSON object'];
  }
  const problems = [];
  const seen = new Set();
  walk(document, '', problems, seen);
  for (const [name, field] of Object.entries(EcsFlat)) {
    if (field.required && !seen.has(name)) problems.push(`${name} is required`);
  }
  const version = document.ecs?.version;
  if (version !== undefined && version !== EcsVersion) {
    problems.push(`ecs.version is ${JSON.stringify(version)}, the schema checked is ${EcsVersion}`);
  }
  const categories = [document.event?.category ?? []].flat();
  const expected = new Set(
    EcsFlat['event.category'].allowed_values
      .filter((entry) => categories.includes(entry.name))
      .flatMap((entry) => entry.expected_event_types ?? []),
  );
  for (const type of [document.event?.type ?? []].flat()) {
    if (!expected.has(type)) {
      problems.push(`event.type ${JSON.stringify(type)} is not expected for event.category ${JSON.stringify(categories)}`);
    }
  }
  return problems;
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node validate.mjs FILE.jsonl...');
  process.exit(2);
}
let documents = 0;
let failures = 0;
for (const file of files) {
  const lines = readFileSync(file, 'utf8').split('\n');
  lines.forEach((line, index) => {
    if (line.trim() === '') return;
    documents += 1;
    let problems;
    try {
      problems = documentProblems(JSON.parse(line));
    } catch (error) {
      problems = [`not JSON: ${error.message}`];
    }
    for (const problem of problems) {
      console.log(`${file}:${index + 1}: ${problem}`);
    }
    if (problems.length > 0) failures += 1;
  });
}
if (documents === 0) {
  console.log('no document to check');
  process.exit(1);
}
console.log(`ECS ${EcsVersion}: ${documents - failures} of ${documents} documents valid`);
process.exit(failures === 0 ? 0 : 1);
