"""Checkpoints of the aggregated policy, in lerobot's pretrained_model layout.

    <output_dir>/checkpoints/round_NNNN/pretrained_model/   config.json, model.safetensors,
                                                            the processors' files, and vlm/
                                                            when the VLM is a local folder
    <output_dir>/checkpoints/round_NNNN/server_state.safetensors   strategy state (FedAdam moments)
    <output_dir>/checkpoints/round_NNNN/round.json          round, eval loss, sha256

A round folder is written under a temporary name and renamed into place, so a reader never sees
half a checkpoint. Retention keeps the last N and the best by eval loss.

Everything a checkpoint needs is in its pretrained_model folder, or named by a hub id: a VLM
read from a local folder (the tiny policy's, generated into the data dir) is copied into
``pretrained_model/vlm/`` (its config, tokenizer and processor; never weights, which
model.safetensors holds) and named ``./vlm`` in config.json and the preprocessor's tokenizer
step. lerobot resolves that name against the working directory, so plain lerobot loads such a
checkpoint from inside its folder; fedvla's own loader resolves it against the folder.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedvla.engine.federation.reporter import CheckpointReport, Reporter

PRETRAINED_DIR = "pretrained_model"
SERVER_STATE_FILE = "server_state.safetensors"
ROUND_FILE = "round.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
VLM_DIR = "vlm"
VLM_NAME = f"./{VLM_DIR}"
"""How a checkpoint names the VLM it carries: a path relative to its own folder."""
VLM_LEFT_OUT = ("*.safetensors", "*.bin", "*.pt", "*.pth", "complete.json", ".*")


def round_dir(output_dir: Path, server_round: int) -> Path:
    return output_dir / "checkpoints" / f"round_{server_round:04d}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SavedRound:
    round: int
    eval_loss: float | None
    path: Path


def save_checkpoint(
    output_dir: Path,
    server_round: int,
    *,
    policy: Any,
    preprocessor: Any,
    postprocessor: Any,
    server_state: dict[str, np.ndarray],
    eval_loss: float | None,
) -> CheckpointReport:
    """Write one round's checkpoint atomically and describe it."""
    final = round_dir(output_dir, server_round)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        pretrained = staging / PRETRAINED_DIR
        policy.save_pretrained(pretrained)
        preprocessor.save_pretrained(pretrained)
        postprocessor.save_pretrained(pretrained)
        carry_local_vlm(pretrained, str(policy.config.vlm_model_name))
        save_file(server_state or {"empty": np.zeros(0, np.float32)}, staging / SERVER_STATE_FILE)
        weights = pretrained / WEIGHTS_FILE
        digest = sha256_of(weights)
        (staging / ROUND_FILE).write_text(
            json.dumps({"round": server_round, "eval_loss": eval_loss, "sha256": digest})
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return CheckpointReport(
        round=server_round,
        path=str(final / PRETRAINED_DIR),
        sha256=digest,
        size_bytes=(final / PRETRAINED_DIR / WEIGHTS_FILE).stat().st_size,
        eval_loss=eval_loss,
    )


def carry_local_vlm(pretrained: Path, vlm_model_name: str) -> None:
    """Copy a VLM read from a local folder into the checkpoint and name it ./vlm there; a hub id
    stays as it is (lerobot reads it from the Hugging Face cache)."""
    source = Path(vlm_model_name)
    if not source.is_dir():
        return
    shutil.copytree(source, pretrained / VLM_DIR, ignore=shutil.ignore_patterns(*VLM_LEFT_OUT))
    config = json.loads((pretrained / CONFIG_FILE).read_text())
    config["vlm_model_name"] = VLM_NAME
    (pretrained / CONFIG_FILE).write_text(json.dumps(config, indent=4))
    for name in PROCESSOR_FILES:
        path = pretrained / name
        pipeline = json.loads(path.read_text())
        for step in pipeline.get("steps", []):
            if step.get("config", {}).get("tokenizer_name") == vlm_model_name:
                step["config"]["tokenizer_name"] = VLM_NAME
        path.write_text(json.dumps(pipeline, indent=2))


def saved_rounds(output_dir: Path) -> list[SavedRound]:
    found = []
    for folder in sorted((output_dir / "checkpoints").glob("round_[0-9]*")):
        meta = folder / ROUND_FILE
        if meta.is_file():
            info = json.loads(meta.read_text())
            found.append(SavedRound(int(info["round"]), info["eval_loss"], folder))
    return found


def apply_retention(output_dir: Path, keep: int, reporter: Reporter) -> None:
    """Keep the last `keep` rounds and the best by eval loss; remove and report the rest."""
    rounds = saved_rounds(output_dir)
    kept = {saved.round for saved in rounds[-keep:]}
    scored = [saved for saved in rounds if saved.eval_loss is not None]
    if scored:
        kept.add(min(scored, key=lambda saved: (saved.eval_loss, -saved.round)).round)
    for saved in rounds:
        if saved.round not in kept:
            shutil.rmtree(saved.path)
            reporter.checkpoint_removed(saved.round)


def load_server_state(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    path = checkpoint_dir / SERVER_STATE_FILE
    state = load_file(path) if path.is_file() else {}
    state.pop("empty", None)
    return state
