"""A clone holds everything its tests, benches and build need: nothing may read a path outside the repository."""
from __future__ import annotations

import re

from tests.conftest import REPO_ROOT

# A sibling folder of the clone, the repository's parent, or this workplace's absolute paths.
OUTSIDE = re.compile(r"\.\./shared|\.parent\s*/\s*[\"']shared|REPO_ROOT\.parent\b|[/]work/")
CHECKED = ["tests", "bench", ".ci", "Makefile", "pyproject.toml", "dvc.yaml", "params.yaml"]


def checked_files():
    for name in CHECKED:
        path = REPO_ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)


def test_nothing_reads_outside_the_repository():
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
                 for path in checked_files()
                 for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if OUTSIDE.search(line)]
    assert offenders == []


def test_the_pattern_catches_the_ways_a_path_leaves_the_clone():
    # Assembled from pieces, so that this file itself passes the scan above.
    sibling, parent, workplace = "shared", "REPO_ROOT" + ".parent", "/" + "work"
    for line in (f'SAMPLE = "../{sibling}/data/x.tsv"', f'DATA = {parent} / "{sibling}" / "data"',
                 f"root = Path(__file__).parent / '{sibling}'", f"open('{workplace}/{sibling}/data/x.tsv')"):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search('TEST_DATA = REPO_ROOT / "tests" / "data"')
