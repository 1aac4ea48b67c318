#!/usr/bin/env bash
# Refreshes fedvla/web/static/vendor/ from the versions pinned in package.json / package-lock.json.
# The dashboard must work with no internet, so the files are committed; node_modules/ is not.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund
vendor=fedvla/web/static/vendor
rm -rf "$vendor"
mkdir -p "$vendor/htmx" "$vendor/htmx-ext-sse" "$vendor/uplot"
cp node_modules/htmx.org/dist/htmx.min.js node_modules/htmx.org/LICENSE "$vendor/htmx/"
cp node_modules/htmx-ext-sse/sse.js node_modules/htmx-ext-sse/LICENSE "$vendor/htmx-ext-sse/"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css \
  node_modules/uplot/LICENSE "$vendor/uplot/"
node -e '
  const lock = require("./package-lock.json").packages;
  const names = ["htmx.org", "htmx-ext-sse", "uplot"];
  const lines = names.map((n) => `${n} ${lock["node_modules/" + n].version}`);
  require("fs").writeFileSync("fedvla/web/static/vendor/VERSIONS", lines.join("\n") + "\n");
'
cat "$vendor/VERSIONS"
