#!/usr/bin/env bash
# Generates C# classes (System.Text.Json attributes) for memworker's
# messages from the JSON Schemas of docs/asyncapi.yaml with quicktype, from
# npm. Usage: scripts/csharp-records.sh [OUT.cs [SCHEMA...]]; the default
# schemas are every op's request and reply envelopes, the error reply, the
# fleet replies and the events.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-Memworker.cs}
shift || true
dir=.cache/quicktype
if [ ! -d "$dir/node_modules/quicktype" ]; then
	mkdir -p "$dir"
	npm install --prefix "$dir" --no-audit --no-fund --silent quicktype@26.0.0 js-yaml@4 >/dev/null
fi
# quicktype reads JSON Schema as JSON.
NODE_PATH="$dir/node_modules" node -e '
const fs = require("fs"), yaml = require("js-yaml");
fs.writeFileSync(process.argv[1], JSON.stringify(yaml.load(fs.readFileSync("docs/asyncapi.yaml", "utf8"))));
' "$dir/asyncapi.json"
schemas=("$@")
if [ ${#schemas[@]} -eq 0 ]; then
	mapfile -t schemas < <(NODE_PATH="$dir/node_modules" node -e '
const doc = require(process.argv[1]);
for (const name of Object.keys(doc.components.schemas))
  if (/(Envelope|^ErrorReply|Event)$/.test(name)) console.log(name);
' "$PWD/$dir/asyncapi.json")
fi
srcs=()
for s in "${schemas[@]}"; do srcs+=("$dir/asyncapi.json#/components/schemas/$s"); done
"$dir/node_modules/.bin/quicktype" --src-lang schema --lang cs --framework SystemTextJson \
	--namespace Memworker --array-type array -o "$out" "${srcs[@]}"
echo "wrote $out: ${#schemas[@]} messages"
