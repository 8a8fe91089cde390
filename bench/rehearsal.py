"""A dress rehearsal of the real path on a CPU: the flickr30k-vit-b-16 preset, small, through `dvc repro`.

    python bench/rehearsal.py [--workdir DIR]        # `make rehearsal`; the copy stays in DIR (default: a temp dir)

In a temporary copy of the pipeline it runs every stage through evaluate with what a real run uses, but small:
- `data.source: karpathy`: a dataset_flickr30k.json written from the 100 images and 500 real captions of the test
  fixture (tests/data/), 84 train / 6 val / 10 test, with generated JPEG images;
- `clip.model: ViT-B-16-quickgelu` with random weights in a local .safetensors file, loaded through
  `clip.pretrained: <file>` as OpenAI's weights would be;
- `llm.backend: openai` against the scripted OpenAI-compatible server (tests/llm_server.py) on 127.0.0.1,
  answering every caption with words of its own;
- the preset's training (SGD, consistent negatives, augmentation, injection layer 0, k = 20) with
  `train.processes: 2` (torchrun, gloo), 4 anchors per process and 2 steps per stage.
It prints each stage's time and the re-ranked recalls, and leaves metrics/eval.json in the copy.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tasks.ablations import applied, presets  # noqa: E402
from tasks.config import load_params  # noqa: E402
from tasks.pipeline import project_copy  # noqa: E402
from tests.llm_server import ScriptedServer  # noqa: E402

CAPTIONS = ROOT / "tests/data/flickr30k_test_captions_sample.tsv"
SPLITS = (("train", 84), ("val", 6), ("test", 10))
LEADING = {"a", "an", "the", "two", "three", "four", "several", "some", "one"}


def write_flickr30k(root: Path, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """dataset_flickr30k.json and flickr30k-images/ under root; returns both paths and the captions."""
    lines = CAPTIONS.read_text(encoding="utf-8").splitlines()[1:]  # after the header
    rows = [line.split("\t", 1) for line in lines if line.strip()]
    by_image: dict[str, list[str]] = {}
    for image, caption in rows:
        by_image.setdefault(image, []).append(caption.strip())
    split_of = [name for name, count in SPLITS for _ in range(count)]
    if len(by_image) != len(split_of):
        raise SystemExit(f"{CAPTIONS}: expected {len(split_of)} images, found {len(by_image)}")
    images_dir = root / "flickr30k-images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries, sentence_id = [], 0
    for index, (image, captions) in enumerate(by_image.items()):
        # Smooth colour fields at a photo's size: something to crop, resize and decode like a JPEG from the set.
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((500, 375), Image.BICUBIC).save(images_dir / image, quality=90)
        sentences = [{"raw": caption, "sentid": sentence_id + n, "imgid": index} for n, caption in enumerate(captions)]
        sentence_id += len(captions)
        entries.append({"filename": image, "imgid": index, "split": split_of[index], "sentences": sentences})
    annotations = root / "dataset_flickr30k.json"
    annotations.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}), encoding="utf-8")
    return annotations, images_dir, [caption for _, caption in rows]


def write_weights(path: Path) -> Path:
    """Random ViT-B-16-quickgelu weights (seeded) as a state-dict file, the form of a downloaded checkpoint."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(path))
    return path


def triplet_of(caption: str) -> list[str]:
    """A caption's own words as <subject, action, object>: the first noun-ish word, the first -ing word, the last."""
    words = re.findall(r"[a-z]+", caption.lower())
    subject = next((w for w in words if w not in LEADING), words[0])
    action = next((w for w in words if w.endswith("ing")), "is")
    return [subject, action, words[-1]]


def llm_script(captions: list[str]) -> dict:
    answers = [{"match": f"Caption: {caption}", "responses": [{"content": json.dumps({"triplets": [triplet_of(caption)]})}]}
               for caption in captions]
    state = {"content": json.dumps({"state": "the body leans into the movement with visible effort"})}
    return {"answers": [{"match": "Triplet:", "responses": [state]}, *answers]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where the copy goes (default: a new temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="actprompt-rehearsal-"))
    started = time.perf_counter()
    project = project_copy(workdir / "project")
    annotations, images_dir, captions = write_flickr30k(workdir / "flickr30k")
    weights = write_weights(workdir / "vit-b-16-quickgelu-random.safetensors")
    model_name = "lmsys/vicuna-7b-v1.5"
    with ScriptedServer(llm_script(captions), workdir / "llm", model=model_name) as server:
        rehearsal = {
            "data.annotations": str(annotations), "data.image_root": str(images_dir),
            "llm.base_urls": [server.base_url], "llm.server.command": None, "llm.model": model_name,
            "clip.model": "ViT-B-16-quickgelu", "clip.pretrained": str(weights),
            "train.processes": 2, "train.batch_size": 4, "train.max_steps": 2, "train.workers": 2,
            "train.score_batch_size": 64, "evaluate.batch_size": 64, "evaluate.report_queries": 2}
        params = applied(load_params(project / "params.yaml"),
                         presets(project)["flickr30k-vit-b-16"].overrides | rehearsal)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        environment = os.environ | {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
        print(f"rehearsal in {project} (prepared in {time.perf_counter() - started:.0f} s)", flush=True)
        result = subprocess.run([sys.executable, "-m", "flows.local_server", "dvc", "repro", "evaluate"],
                                cwd=project, env=environment, check=False)
    if result.returncode != 0:
        raise SystemExit(f"rehearsal failed (exit {result.returncode}); the copy is in {project}")
    metrics = json.loads((project / "metrics/eval.json").read_text(encoding="utf-8"))
    print(f"\nrehearsal passed in {(time.perf_counter() - started) / 60:.1f} min: {project / 'metrics/eval.json'}")
    print(f"zero-shot Rsum {metrics['zero_shot']['rsum']}, re-ranked Rsum {metrics['reranked']['rsum']} "
          "(random weights: only that every stage ran matters)")


if __name__ == "__main__":
    main()
