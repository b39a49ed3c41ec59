#!/usr/bin/env bash
# Updates the web console's front-end dependencies: installs the versions
# pinned by web/package-lock.json with npm and copies the files kvmkit embeds
# into web/dist/ (committed, so `cargo build` needs no npm). To move to a new
# version: edit web/package.json, run `npm install` in web/ (it rewrites the
# lock file), then this script, then rebuild kvmkit and commit web/.
set -euo pipefail
cd "$(dirname "$0")/../web"
npm ci --no-audit --no-fund
mkdir -p dist
cp node_modules/@xterm/xterm/lib/xterm.js dist/xterm.js
cp node_modules/@xterm/xterm/css/xterm.css dist/xterm.css
cp node_modules/@xterm/addon-fit/lib/addon-fit.js dist/addon-fit.js
cp node_modules/@xterm/xterm/LICENSE dist/LICENSE.xterm
# The source-map comments name files kvmkit does not serve.
sed -i '/^\/\/# sourceMappingURL=/d' dist/xterm.js dist/addon-fit.js
( cd dist && sha256sum xterm.js xterm.css addon-fit.js > SHA256SUMS )
echo "web/dist updated:"; cat dist/SHA256SUMS
