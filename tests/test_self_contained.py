"""A clone holds everything its tests, benches and build need: nothing may read a path outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO_ROOT

# A sibling folder of the clone, the repository's parent, or this workplace's absolute paths.
OUTSIDE = re.compile(r"\.\./shared|\.parent\s*/\s*[\"']shared|REPO_ROOT\.parent\b|[/]work/")
CHECKED = ["tests", "bench", ".ci", "Makefile", "pyproject.toml", "dvc.yaml", "params.yaml"]


def checked_files():
    """The files to scan, less this one: its examples below are what the pattern must catch."""
    for name in CHECKED:
        path = REPO_ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in sorted(path.rglob("*"))
                        if p.is_file() and "__pycache__" not in p.parts and p != Path(__file__).resolve())


def test_nothing_reads_outside_the_repository():
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
                 for path in checked_files()
                 for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if OUTSIDE.search(line)]
    assert offenders == []


def test_the_pattern_catches_the_ways_a_path_leaves_the_clone():
    for line in ('SAMPLE = "../shared/data/x.tsv"', 'DATA = REPO_ROOT.parent / "shared" / "data"',
                 "root = Path(__file__).parent / 'shared'", "open('/work/shared/data/x.tsv')"):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search('TEST_DATA = REPO_ROOT / "tests" / "data"')
