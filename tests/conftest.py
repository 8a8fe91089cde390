"""Test-session environment: offline, telemetry off, a private PREFECT_HOME, one Prefect test server."""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.update({
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_HOME": tempfile.mkdtemp(prefix="actprompt-prefect-"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Temporary git repos commit (DVC experiments too): no identity may be configured on CI.
    "GIT_AUTHOR_NAME": "ActPrompt tests", "GIT_AUTHOR_EMAIL": "tests@actprompt.invalid",
    "GIT_COMMITTER_NAME": "ActPrompt tests", "GIT_COMMITTER_EMAIL": "tests@actprompt.invalid",
})

from prefect.settings import PREFECT_API_URL  # noqa: E402  (after the environment above)
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from tasks.ablations import applied, presets  # noqa: E402
from tasks.config import load_params  # noqa: E402
from tasks.pipeline import project_copy  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = REPO_ROOT / "tests" / "data"  # fixtures committed with the suite (tests/data/README.md)
# params.yaml states the paper's recipe (batch 128, ...); tests run the demo's CPU budget, as `make demo` does.
PARAMS = applied(load_params(REPO_ROOT / "params.yaml"), presets(REPO_ROOT)["demo-cpu"].overrides)


def params_with(**sections: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with some settings replaced, nested mappings merged: params_with(data={"demo": {"n_images": 8}})."""
    return merged(PARAMS, sections)


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes`, nested mappings merged key by key (both left unchanged)."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    """One real Prefect server for the whole session (it takes ~12 s to start)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A git repository holding a copy of the project, to run DVC and deployments in."""
    return project_copy(tmp_path / "project")
