"""Resume points of an unfinished training run, in checkpoints/stage<N>/ (no DVC output).

A checkpoint (safetensors weights + optimizer, scheduler and scaler state + position) is written every
`train.checkpoint_every` steps and at every epoch end. Checkpoints belong to one fingerprint of the run's inputs:
a re-run with the same inputs continues from the last one, a run with other inputs starts afresh, and a finished
run removes them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model import ActionAwareCLIP
from tasks.train.model_files import WEIGHTS_FILE, load_prompt_state, prompt_state

BEST_FILE = "best.safetensors"
# Part of every fingerprint: checkpoints of another layout (format 1: one optimizer group) are never resumed.
FORMAT = 2


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoints:
    """step-NNNNNNNN/ folders (weights, optimizer and scheduler state, position) for one fingerprint of inputs."""

    def __init__(self, folder: Path, fingerprint: str, keep: int):
        self.folder, self.fingerprint, self.keep = folder, fingerprint, keep

    def _current(self) -> bool:
        marker = self.folder / "fingerprint.txt"
        return marker.is_file() and marker.read_text().strip() == self.fingerprint

    def latest(self) -> Path | None:
        """The newest complete checkpoint of these inputs; another run's checkpoints are never resumed."""
        completed = sorted(self.folder.glob("step-*/position.json")) if self._current() else []
        return completed[-1].parent if completed else None

    def save(self, model: ActionAwareCLIP, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
             position: dict[str, Any]) -> None:
        self._claim()
        target = self.folder / f"step-{position['global_step']:08d}"
        partial = target.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file(prompt_state(model), partial / WEIGHTS_FILE)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict()}, partial / "optimizer.pt")
        (partial / "position.json").write_text(json.dumps(position) + "\n")  # last: marks it complete
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in sorted(self.folder.glob("step-*[0-9]"))[:-self.keep]:
            shutil.rmtree(old)

    def save_best(self, model: ActionAwareCLIP) -> None:
        """The best weights so far; the position saved next records which epoch they are."""
        self._claim()
        partial = self.folder / (BEST_FILE + ".partial")
        save_file(prompt_state(model), partial)
        partial.replace(self.folder / BEST_FILE)

    def load_best(self, model: ActionAwareCLIP) -> None:
        load_prompt_state(model, self.folder / BEST_FILE)

    def _claim(self) -> None:
        if not self._current():
            shutil.rmtree(self.folder, ignore_errors=True)  # checkpoints of other inputs
            self.folder.mkdir(parents=True)
            (self.folder / "fingerprint.txt").write_text(self.fingerprint + "\n")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def restore(checkpoint: Path, model: ActionAwareCLIP, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: Any) -> dict[str, Any]:
        load_prompt_state(model, checkpoint / WEIGHTS_FILE)
        state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        return json.loads((checkpoint / "position.json").read_text())
