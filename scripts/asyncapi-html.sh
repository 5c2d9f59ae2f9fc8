#!/usr/bin/env bash
# Renders docs/asyncapi.yaml as a web page with the AsyncAPI generator and
# its HTML template (from npm, pinned, installed once into
# .cache/asyncapi-html; the template's PDF support would download Chrome,
# which the page does not need). Usage: scripts/asyncapi-html.sh [OUT_DIR]
# (default: a folder outside the repository, as the generator wants).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${TMPDIR:-/tmp}/memworker-asyncapi}
dir=.cache/asyncapi-html
if [ ! -x "$dir/node_modules/.bin/asyncapi-generator" ]; then
	mkdir -p "$dir"
	PUPPETEER_SKIP_DOWNLOAD=1 npm install --prefix "$dir" --no-audit --no-fund --silent \
		@asyncapi/generator@2.8.4 @asyncapi/html-template@3.5.6 >/dev/null
fi
# --force-write: the folder is the page's own; a second run replaces it.
"$dir/node_modules/.bin/asyncapi-generator" docs/asyncapi.yaml "$dir/node_modules/@asyncapi/html-template" \
	-o "$out" --force-write --disable-warning >/dev/null
echo "open $out/index.html"
