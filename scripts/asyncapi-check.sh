#!/usr/bin/env bash
# Parses docs/asyncapi.yaml with the AsyncAPI project's own parser
# (@asyncapi/parser from npm, installed once into .cache/asyncapi-parser,
# git-ignored) and fails on any error diagnostic.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/asyncapi-parser
if [ ! -d "$dir/node_modules/@asyncapi/parser" ]; then
	mkdir -p "$dir"
	npm install --prefix "$dir" --no-audit --no-fund --silent @asyncapi/parser@3.6.6 >/dev/null
fi
cat >"$dir/parse.mjs" <<'JS'
import { Parser, fromFile } from '@asyncapi/parser';
const { document, diagnostics } = await fromFile(new Parser(), process.argv[2]).parse();
const errors = diagnostics.filter(d => d.severity === 0);
for (const d of errors) console.log('error', d.code, d.message, JSON.stringify(d.path));
if (!document || errors.length) { console.log('FAILED:', errors.length, 'errors'); process.exit(1); }
console.log('parsed:', document.channels().length, 'channels,', document.operations().length, 'operations,',
  document.components().messages().length, 'messages,', diagnostics.length, 'notes');
JS
node "$dir/parse.mjs" docs/asyncapi.yaml
