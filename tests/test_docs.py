"""The documents match the tree: the architecture diagram is rendered from its source, the README shows it and
its layout table names every top-level directory, and every document the package cites exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_architecture_svg_is_rendered_from_its_source():
    source = (DOCS / "architecture.dot").read_text()
    svg = (DOCS / "architecture.svg").read_text()
    nodes = set(re.findall(r"^\s*(\w+) \[label=", source, re.M))
    assert len(nodes) >= 15
    rendered = set(re.findall(r'<g id="node\d+" class="node">\s*<title>(\w+)</title>', svg))
    assert rendered == nodes, "run tools/render_docs.sh after editing docs/architecture.dot"


def test_readme_shows_the_diagram_and_its_layout_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/architecture.svg)" in readme
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    first_cells = [row.split("|")[1] for row in layout.splitlines() if row.startswith("| `")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top_dirs = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line}
    named = {name for cell in first_cells for name in re.findall(r"`([.\w-]+)/", cell)}
    assert top_dirs <= named, f"missing from README's layout table: {sorted(top_dirs - named)}"
    assert all((ROOT / d).is_dir() for d in named), f"named but absent: {[d for d in named if not (ROOT / d).is_dir()]}"


def test_documents_cited_by_the_package_exist():
    cited: set[str] = set()
    for path in (ROOT / "pyphase").rglob("*.py"):
        cited.update(re.findall(r"\b(?:docs/)?([A-Z]+\.md)\b", path.read_text()))
    assert cited, "the package cites its design documents"
    missing = [name for name in cited if not (DOCS / name).exists() and not (ROOT / name).exists()]
    assert not missing, missing
