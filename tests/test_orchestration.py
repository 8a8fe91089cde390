"""Prefect and DVC for real: the ingest flow on a Prefect server, the DVC pipeline, the served deployment."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.ingest import ingest
from tasks import paths, schemas
from tasks.ingest.demo import NOUNS
from tasks.pipeline import param_overrides
from tests.conftest import PARAMS
from tests.llm_server import ScriptedServer

pytestmark = pytest.mark.slow  # a Prefect server, DVC pipelines and served deployments: minutes

SMALL_DEMO = {"n_images": 24, "image_size": 48}
# Every demo caption mentions an actor; the scripted LLM answers about the first one it finds (" man", not "woman").
LLM_SCRIPT = {"answers": [{"match": "Triplet:", "responses": [
    {"content": json.dumps({"state": "moving the whole body with clear and visible effort"})}]}] + [
    {"match": f" {noun}", "responses": [{"content": json.dumps({"triplets": [[noun, "is", "there"], [noun, "near", noun]]})}]}
    for noun in NOUNS]}


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory) -> ScriptedServer:
    with ScriptedServer(LLM_SCRIPT, tmp_path_factory.mktemp("llm")) as server:
        yield server


@pytest.fixture(scope="module")
def llm_url(llm_server) -> str:
    return llm_server.base_url


def write_params(root: Path, llm_url: str = "http://127.0.0.1:9/v1", **data) -> Path:
    """The project's params with a small demo, the scripted LLM server (few captions, one attempt each), a tiny
    CLIP trained for one epoch and one epoch of each training stage."""
    params = copy.deepcopy(PARAMS)
    params["data"].update(data)
    params["data"]["demo"].update(SMALL_DEMO)
    params["llm"].update(backend="openai", model="scripted-model", base_urls=[llm_url], limit=6, max_attempts=1)
    params["clip"].update(model="ViT-Tiny-Test", device="cpu")
    params["clip"]["scratch"].update(epochs=1, corpus_images=32)
    params["train"].update(device="cpu", batch_size=16, cross_negatives=2)
    params["train"]["stage1"]["epochs"] = params["train"]["stage2"]["epochs"] = 1
    params["evaluate"].update(device="cpu", report_queries=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml"


def commit_all(root: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=root, check=True)


def run(command: list[str], cwd: Path, api_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"PREFECT_API_URL": api_url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def test_ingest_flow_runs_on_a_prefect_server(prefect_api_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    state = ingest(params_file="params.yaml", return_state=True)
    assert state.is_completed(), state.message

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs()
    assert flow_run.state.is_completed()
    assert {run.name.rsplit("-", 1)[0] for run in task_runs if run.flow_run_id == flow_run.id} == \
        {"read-captions", "relocate-images", "check-images", "write-captions"}
    captions = schemas.read(tmp_path / paths.CAPTIONS, schemas.CAPTIONS)
    assert len(captions) == 5 * SMALL_DEMO["n_images"]
    assert state.result()["captions"] == {"input": 120, "kept": 120, "dropped": 0, "dropped_bad_caption": 0,
                              "dropped_bad_image": 0, "dropped_over_limit": 0}


def test_failed_ingest_flow_exits_with_one_line_and_no_traceback(prefect_api_url, tmp_path):
    annotations = tmp_path / "captions.tsv"
    annotations.write_text("image\tcaption\nmissing.jpg\ta dog\n")
    write_params(tmp_path, source="table", annotations=str(annotations))
    finished = run([sys.executable, "-m", "flows.ingest"], tmp_path, prefect_api_url)
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ingest: ingest failed (1 image: missing): ")
    assert f"{tmp_path}/missing.jpg: missing" in last_line


def test_dvc_repro_is_idempotent_and_reruns_ingest_on_a_data_param(prefect_api_url, project, llm_url):
    write_params(project, llm_url)
    commit_all(project, "small demo")
    first = run(["dvc", "repro"], project, prefect_api_url)
    assert first.returncode == 0, first.stderr + first.stdout
    for stage in ("ingest", "knowledge", "validate", "base_clip", "featurize", "train_stage1", "train_stage2",
                  "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    captions = schemas.read(project / paths.CAPTIONS, schemas.CAPTIONS)
    assert len(captions) == 5 * SMALL_DEMO["n_images"]
    knowledge = schemas.read(project / paths.KNOWLEDGE, schemas.KNOWLEDGE)
    assert knowledge["caption_id"].tolist() == captions["caption_id"].tolist()
    assert (knowledge["status"] != "empty").sum() == 6  # llm.limit distinct captions were asked
    meta = json.loads((project / paths.FEATURES / "meta.json").read_text())
    assert sum(split["captions"] for split in meta["splits"].values()) == len(captions)
    assert json.loads((project / paths.BASE_CLIP_REPORT).read_text())["loss_per_epoch"]  # trained from scratch
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert evaluation["split"] == "test" and {"zero_shot", "reranked"} <= set(evaluation)
    plots = run(["dvc", "plots", "show", "--json"], project, prefect_api_url)
    assert plots.returncode == 0 and "train/loss" in plots.stdout and "recall.csv" in plots.stdout

    second = run(["dvc", "repro"], project, prefect_api_url)
    assert second.returncode == 0 and "Running stage" not in second.stdout
    assert "didn't change" in second.stdout

    # Ablations run as isolated experiments (on the committed pipeline): none leaves its overrides behind for
    # the next preset or in the workspace.
    commit_all(project, "reproduced")
    params_before = (project / "params.yaml").read_text()
    ablations = run([sys.executable, "-m", "tasks.ablations", "run", "table3-no-action-knowledge", "table2-state"],
                    project, prefect_api_url)
    assert ablations.returncode == 0, ablations.stdout[-3000:] + ablations.stderr[-3000:]
    assert (project / "params.yaml").read_text() == params_before
    shown = run(["dvc", "exp", "show", "--json"], project, prefect_api_url)
    experiments = {e["name"]: e["revs"][0]["data"]["params"]["params.yaml"]["data"]["prompt"]
                   for baseline in json.loads(shown.stdout) for e in baseline.get("experiments") or []}
    (no_knowledge,) = [p for name, p in experiments.items() if "table3-no-action-knowledge" in name]
    (states_only,) = [p for name, p in experiments.items() if "table2-state" in name]
    assert not no_knowledge["use_triplets"] and not no_knowledge["use_states"]
    assert not states_only["use_triplets"] and states_only["use_states"] and states_only["n_visual_prompts"] == 0
    table = run([sys.executable, "-m", "tasks.ablations", "table", "--json"], project, prefect_api_url)
    assert table.returncode == 0, table.stderr[-3000:]
    summary = json.loads((project / "metrics/ablations.json").read_text())
    assert list(summary["rows"])[:1] == ["zero-shot"]
    for name in ("table3-no-action-knowledge", "table2-state"):
        row = summary["rows"][name]
        assert name in row["experiment"] and row["rsum"] is not None and row["twin_i2t_r1"] is not None
    assert summary["rows"]["table3-no-action-knowledge"]["knowledge_effect"] == 0.0  # no knowledge to swap
    bars = run(["dvc", "plots", "show", "--json"], project, prefect_api_url)
    assert '"plots/ablations.csv"' in bars.stdout and "table2-state" in bars.stdout

    # Same captions come out of ingest, so nothing downstream runs again.
    write_params(project, llm_url, min_image_side=16)
    third = run(["dvc", "repro"], project, prefect_api_url)
    assert third.returncode == 0 and "Running stage 'ingest'" in third.stdout
    for stage in ("knowledge", "base_clip", "featurize"):
        assert f"Running stage '{stage}'" not in third.stdout


def test_params_and_stages_parse_as_dvc_reads_them():
    """DVC's YAML reader is stricter than PyYAML (e.g. a URL in a flow list must be quoted)."""
    from dvc.utils.serialize import load_yaml

    root = Path(__file__).parent.parent
    params, pipeline = load_yaml(root / "params.yaml"), load_yaml(root / "dvc.yaml")
    assert params["llm"]["base_urls"] == ["http://127.0.0.1:8000/v1"]
    assert list(pipeline["stages"]) == ["ingest", "knowledge", "validate", "base_clip", "featurize", "train_stage1",
                                        "train_stage2", "evaluate"]


def test_training_stages_rerun_for_every_setting_that_changes_the_model():
    """A train.* key missing from a stage's params would let `dvc exp run -S` reuse a model trained without it."""
    from dvc.utils.serialize import load_yaml

    from tasks.train.config import TrainConfig

    pipeline = load_yaml(Path(__file__).parent.parent / "dvc.yaml")
    # Where and how fast it runs, never what it learns.
    no_effect = {"device", "checkpoint_every", "keep_checkpoints", "prefix_cache", "score_batch_size", "workers",
                 "rdzv_endpoint"}
    for stage, own in (("train_stage1", "stage1"), ("train_stage2", "stage2")):
        listed = {name.removeprefix("train.") for name in pipeline["stages"][stage]["params"]
                  if isinstance(name, str) and name.startswith("train.")}
        needed = {f.name for f in fields(TrainConfig)} - no_effect - {"stage1", "stage2"} | {own}
        assert needed <= listed, f"{stage} misses params {sorted(needed - listed)}"


def test_param_overrides_follow_dvc_set_param_syntax():
    assert param_overrides({"data.source": "table", "data.demo.n_images": 30, "llm.base_urls": ["http://a/v1"]}) == \
        ["data.source=table", "data.demo.n_images=30", 'llm.base_urls=["http://a/v1"]']


def wait_for_deployment(name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:  # ObjectNotFound until `serve` has registered it
                time.sleep(1)
    raise TimeoutError(f"deployment {name} was not registered within {timeout_s} s")


def newest_experiment_file(project: Path, path: str) -> str:
    """`path` as committed by the newest DVC experiment (its metrics and params live in git)."""
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--sort=-committerdate", "--format=%(objectname)"],
                          cwd=project, capture_output=True, text=True, check=True).stdout.split()
    return subprocess.run(["git", "show", f"{refs[0]}:{path}"], cwd=project, capture_output=True, text=True,
                          check=True).stdout


def test_served_deployments_run_dvc(prefect_api_url, project, llm_server):
    write_params(project, llm_server.base_url)
    commit_all(project, "small demo")
    server_env = os.environ | {"PREFECT_API_URL": prefect_api_url}
    serve_log = project.parent / "serve.log"
    with open(serve_log, "w") as log:
        serving = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=project, env=server_env,
                                   stdout=log, stderr=subprocess.STDOUT)

    def deploy(name: str, timeout: float = 300, **parameters) -> None:
        wait_for_deployment(name)
        flow_run = run_deployment(name, timeout=timeout, parameters={"project_dir": str(project), **parameters})
        assert flow_run.state.is_completed(), serve_log.read_text()[-3000:]

    def workspace() -> tuple[str, str]:
        return (project / "params.yaml").read_text(), (project / "dvc.lock").read_text()

    def llm_requests() -> int:
        return llm_server.stats()["requests"]

    try:
        deploy("ingest-captions/default")
        assert len(schemas.read(project / paths.CAPTIONS, schemas.CAPTIONS)) == 5 * SMALL_DEMO["n_images"]
        assert "ingest:" in (project / "dvc.lock").read_text()  # versioned by DVC, not written around it
        commit_all(project, "lock")

        # With parameters a run is an isolated experiment: the workspace keeps its params, lock and outputs.
        before = workspace()
        deploy("ingest-captions/default", set_params={"data.demo.n_images": 9})
        assert workspace() == before
        assert len(schemas.read(project / paths.CAPTIONS, schemas.CAPTIONS)) == 5 * SMALL_DEMO["n_images"]
        assert json.loads(newest_experiment_file(project, "reports/ingest.json"))["captions"]["kept"] == 45

        # README's smoke test, `--param limit=...` alone, then every parameter mapped onto llm.* params.
        deploy("generate-knowledge/default", limit=2)
        assert workspace() == before
        assert json.loads(newest_experiment_file(project, "reports/knowledge_run.json"))["asked_captions"] == 2
        deploy("generate-knowledge/default", backend="openai", model="scripted-model", base_urls=[llm_server.base_url],
               limit=4)
        assert workspace() == before
        status = json.loads(newest_experiment_file(project, "reports/knowledge.json"))["status"]
        assert status["empty"] == 5 * SMALL_DEMO["n_images"] - 4
        experiment_llm = yaml.safe_load(newest_experiment_file(project, "params.yaml"))["llm"]
        assert (experiment_llm["base_urls"], experiment_llm["limit"]) == ([llm_server.base_url], 4)

        # The nightly evaluation: on its cron schedule, and run now through DVC, keeping a history.
        with get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("nightly-evaluation/default")
        assert [schedule.schedule.cron for schedule in nightly.schedules] == ["0 3 * * *"]
        for _ in range(2):
            deploy("nightly-evaluation/default", timeout=400)
        history = [json.loads(line) for line in (project / "reports/eval_history.jsonl").read_text().splitlines()]
        assert len(history) == 2 and history[0]["reranked"] == history[1]["reranked"]
        assert "evaluate" in " ".join(history[0]["reproduced"]) and history[1]["reproduced"] == []

        # After a whole pipeline run (as after `make demo`), knowledge comes from the resume cache: without
        # parameters nothing is stale, and an experiment's temporary copy gets the cache checked out.
        commit_all(project, "reproduced")
        asked = llm_requests()
        deploy("generate-knowledge/default")
        deploy("generate-knowledge/default", limit=4)
        assert llm_requests() == asked
        assert json.loads(newest_experiment_file(project, "reports/knowledge_run.json"))["cached_captions"] == 4
    finally:
        # Stop `serve` before the test server goes away, or it hangs pausing its deployments.
        serving.terminate()
        serving.wait(timeout=60)


def test_local_server_serves_the_command_and_stops(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "home")}
    finished = subprocess.run(
        [sys.executable, "-m", "flows.local_server", sys.executable, "-c",
         "import os, urllib.request; url = os.environ['PREFECT_API_URL']; "
         "print(url); print(urllib.request.urlopen(url + '/health').status)"],
        capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    api_url, status = finished.stdout.split()
    assert api_url.startswith("http://127.0.0.1:") and status == "200"
    with pytest.raises(OSError):
        urllib.request.urlopen(api_url + "/health", timeout=5)
