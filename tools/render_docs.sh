#!/bin/sh
# Render the documentation's diagrams from their committed graphviz sources (apt-get install graphviz).
#   tools/render_docs.sh          docs/*.dot -> docs/*.svg
#   tools/render_docs.sh --png    also a PNG beside each SVG (to look at it; PNGs are not committed)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v dot >/dev/null 2>&1 || { echo "render_docs: graphviz's dot is missing (apt-get install graphviz)" >&2; exit 1; }
for src in "$ROOT"/docs/*.dot; do
    dot -Tsvg "$src" -o "${src%.dot}.svg"
    echo "rendered ${src%.dot}.svg"
    if [ "${1:-}" = "--png" ]; then
        dot -Tpng -Gdpi=110 "$src" -o "${src%.dot}.png"
    fi
done
