"""`make demo` pulls the demo's LLM answers and backbone from the in-repo DVC remote `demo`: it must hold what
dvc.lock names."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from dvc.config import Config

from tasks import paths

REPO_ROOT = Path(__file__).resolve().parent.parent


def remote_object(md5: str) -> Path:
    url = Config(dvc_dir=str(REPO_ROOT / ".dvc"), validate=False)["remote"]["demo"]["url"]
    store = (REPO_ROOT / ".dvc" / url).resolve()
    return store / "files/md5" / md5[:2] / md5[2:]


@pytest.mark.parametrize(("stage", "path"), [("knowledge", paths.KNOWLEDGE_RAW), ("base_clip", paths.BASE_CLIP)])
def test_the_demo_remote_holds_the_locked_stage_outputs(stage, path):
    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"][stage]["outs"] if o["path"] == str(path)]
    manifest = json.loads(remote_object(out["md5"]).read_text())
    assert manifest and len(manifest) == out["nfiles"]
    for entry in manifest:
        content = remote_object(entry["md5"]).read_bytes()
        assert hashlib.md5(content).hexdigest() == entry["md5"], entry["relpath"]
