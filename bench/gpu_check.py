"""The GPU paths of the engine, checked on a CUDA machine: training in bf16 autocast, evaluation,
checkpoints that lerobot loads on the GPU, and the engine's training step on a policy of
smolvla_base's shape (steady_step_seconds: the mean of the steps after the first).

    HF_HUB_OFFLINE=1 python bench/gpu_check.py [--device cuda] [--base-steps 5]

Writes bench/results/gpu_check.json (or --out). On a machine without CUDA, --device cpu runs the
same path with tiny sizes (the smoke test does that).
"""

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from fedvla.core.experiment_config import TINY_POLICY, DatasetRef
from fedvla.engine.data.loader import frames_to_float
from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
from fedvla.engine.federation.checkpoints import save_checkpoint
from fedvla.engine.federation.task import (
    build_bundle,
    evaluate,
    open_dataset,
    ready_to_train,
    train,
)
from fedvla.engine.policy.loading import resolve_policy_source
from fedvla.engine.policy.tiny import tiny_smolvla_config

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"


def tiny_on_device(scratch: Path, device: str, steps: int) -> dict[str, Any]:
    """Train the tiny policy on synthetic data, checkpoint it, reload it with plain lerobot."""
    from lerobot.policies.smolvla import SmolVLAPolicy

    root = generate_dataset(scratch / "dataset", SyntheticSpec(episodes=6, frames_per_episode=20))
    chunk = tiny_smolvla_config(scratch / "data", state_dim=6, action_dim=6).chunk_size
    data = open_dataset(
        DatasetRef(repo_id="synthetic/so100", root=str(root)), chunk_size=chunk, owner="gpu-check"
    )
    bundle = build_bundle(
        resolve_policy_source(TINY_POLICY),
        data.features,
        stats=data.stats,
        data_dir=scratch / "data",
        seed=0,
        device=device,
    )
    before = evaluate(bundle, data, batches=2, batch_size=8, seed=1).loss
    if device == "cuda":
        torch.cuda.synchronize()
    result = train(bundle, data, steps=steps, batch_size=8, learning_rate=1e-3, seed=0)
    after = evaluate(bundle, data, batches=2, batch_size=8, seed=1).loss
    report = save_checkpoint(
        scratch / "run",
        1,
        policy=bundle.policy,
        preprocessor=bundle.preprocessor,
        postprocessor=bundle.postprocessor,
        server_state={},
        eval_loss=after,
    )
    with contextlib.chdir(report.path):  # the tiny policy's VLM is the checkpoint's ./vlm
        reloaded = SmolVLAPolicy.from_pretrained(report.path).to(device)
    reloaded.eval()
    batch = frames_to_float(
        bundle.preprocessor(next(iter(torch.utils.data.DataLoader(data.dataset, batch_size=2)))),
        data.camera_keys,
    )
    with torch.no_grad():
        action = reloaded.select_action(batch)
    return {
        "device": device,
        "param_dtype": str(next(bundle.policy.parameters()).dtype),
        "autocast_bf16": device == "cuda" and torch.cuda.is_bf16_supported(),
        "eval_loss_before": round(before, 4),
        "eval_loss_after": round(after, 4),
        "train_steps": steps,
        "train_seconds": round(result.seconds, 3),
        "checkpoint_sha256": report.sha256,
        "reloaded_action_shape": list(action.shape),
        "reloaded_action_finite": bool(torch.isfinite(action).all()),
        "reloaded_on": str(next(reloaded.parameters()).device),
    }


def base_shape_step(scratch: Path, device: str, steps: int, batch_size: int) -> dict[str, Any]:
    """The engine's training step (task.train) on a policy of smolvla_base's shape (random
    weights) fed by a synthetic dataset with its three 256x256 cameras."""
    from lerobot.policies.smolvla import SmolVLAPolicy

    sys.path.insert(0, str(Path(__file__).parent))
    from comm_bytes import smolvla_base_config, smolvlm2_folder

    config = smolvla_base_config(smolvlm2_folder(scratch / "smolvlm2"))
    config.device = device
    spec = SyntheticSpec(
        cameras=tuple(key.rsplit(".", 1)[1] for key in config.image_features),
        image_shape=(256, 256),
        episodes=2,
        frames_per_episode=max(batch_size, 10),
    )
    root = generate_dataset(scratch / "base-dataset", spec)
    data = open_dataset(
        DatasetRef(repo_id=spec.repo_id, root=str(root)),
        chunk_size=config.chunk_size,
        owner="gpu-check",
    )
    with torch.device(device):
        policy = SmolVLAPolicy(config)
    bundle = ready_to_train(policy, data.stats, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = train(bundle, data, steps=1, batch_size=batch_size, learning_rate=1e-4, seed=0)
    rest = (
        train(bundle, data, steps=steps - 1, batch_size=batch_size, learning_rate=1e-4, seed=1)
        if steps > 1
        else None
    )
    data.close()
    losses = first.losses + (rest.losses if rest else [])
    return {
        "params_total": sum(p.numel() for p in policy.parameters()),
        "params_trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "batch_size": batch_size,
        "steps": steps,
        "first_step_seconds": round(first.seconds, 3),
        "steady_step_seconds": round(rest.seconds / rest.steps, 4) if rest else None,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device == "cuda"
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny-steps", type=int, default=30)
    parser.add_argument("--base-steps", type=int, default=6)
    parser.add_argument("--base-batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu")
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        results["tiny"] = tiny_on_device(scratch, args.device, args.tiny_steps)
        print(json.dumps(results, indent=2), flush=True)
        if args.base_steps > 0:
            results["smolvla_base_shape"] = base_shape_step(
                scratch, args.device, args.base_steps, args.base_batch
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
