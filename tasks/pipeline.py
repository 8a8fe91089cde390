"""Running the DVC pipeline through DVC's API, so runs started from Prefect stay versioned."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dvc.repo import Repo

PROJECT_DIR = Path(__file__).resolve().parent.parent
# What a fresh clone holds that the pipeline needs (no .venv, no artifacts).
PROJECT_FILES = ["flows", "tasks", "model", "prompts", "configs", "dvc.yaml", "params.yaml", ".dvc/config",
                 ".dvc/.gitignore", ".dvcignore", ".gitignore"]


def project_copy(target: Path, source: Path = PROJECT_DIR) -> Path:
    """A git repository at `target` holding the pipeline's files of `source`: a place to run DVC apart."""
    for name in PROJECT_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, target / name)
    identity = ["-c", "user.name=ActPrompt", "-c", "user.email=actprompt@localhost"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], [*identity, "commit", "-qm", "project"]):
        subprocess.run(["git", *command], cwd=target, check=True)
    return target


def git_revision(project_dir: str | Path) -> str | None:
    """The commit checked out in `project_dir`, or None outside a git repository with a commit."""
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True)
    return found.stdout.strip() or None


def param_overrides(set_params: Mapping[str, Any]) -> list[str]:
    """{"data.source": "table", "llm.base_urls": [...]} -> ["data.source=table", 'llm.base_urls=[...]'] (dvc -S)."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in set_params.items()]


def reproduce(stage: str, set_params: Mapping[str, Any] | None = None, project_dir: str | Path = PROJECT_DIR,
              experiment_name: str | None = None, isolated: bool = False) -> dict[str, Any]:
    """`dvc repro STAGE`, or `dvc exp run STAGE -S key=value ...` when parameters are overridden or the run is
    a named experiment. An experiment runs in the workspace and leaves its params and outputs there, unless
    `isolated` (`--temp`: a temporary copy, the workspace untouched).

    Stage commands run `python -m flows.<stage>`: put this interpreter first on PATH so they use this
    environment even when it was never activated.
    """
    interpreter_dir, search_path = str(Path(sys.executable).parent), os.environ.get("PATH", "")
    if search_path.split(os.pathsep)[0] != interpreter_dir:
        os.environ["PATH"] = os.pathsep.join([interpreter_dir, search_path])
    with Repo(str(project_dir)) as repo:
        if set_params or experiment_name:
            experiments = repo.experiments.run(targets=[stage], params=param_overrides(set_params or {}),
                                               name=experiment_name, tmp_dir=isolated)
            names = repo.experiments.get_exact_name(list(experiments))
            return {"experiments": [names[revision] for revision in experiments], "revisions": list(experiments),
                    "params": dict(set_params or {})}
        reproduced = repo.reproduce(stage)
        return {"reproduced": [s.addressing for s in reproduced]}
