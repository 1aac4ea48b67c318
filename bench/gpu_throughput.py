"""GPU throughput: does the fedvla client loop feed the GPU as well as lerobot-train feeds it?

smolvla_base's shape (built offline, random weights; --shape tiny for CPU smoke runs) trains on a
synthetic SO-100 video dataset (two 480x640 AV1 cameras, built here) at each batch size, and the
samples/s of N timed steps (after warm-up steps) are measured for:
  fedvla      - fedvla.engine.federation.task.train, the client loop a federation runs: loader
  worker
                processes, pinned memory, uint8 frames made floats on the device, a feed that
                persists across calls (rounds), frozen VLM in bf16 on CUDA, fused AdamW, a loss
                that does not read the GPU back each step;
  lerobot     - the same model fed as lerobot-train 0.6.1 feeds it: a DataLoader with the same
                number of worker processes, pinned memory, persistent workers, prefetch 2, uint8
                frames made floats on the CPU, policy.forward, plain AdamW, float32 frozen VLM;
  compute     - compute alone: one preprocessed batch on the device, reused every step, with
                lerobot's setup (float32 VLM, plain AdamW, policy.forward) and with fedvla's.
Then, at one batch size, compute alone with each of fedvla's changes added one at a time (what
each gave), and with torch.compile if --compile. Writes bench/results/gpu_throughput.{json,md}
after every section (a run cut short keeps what it measured).

    HF_HUB_OFFLINE=1 python bench/gpu_throughput.py [--batches 8,32,64] [--steps 20]
    python bench/gpu_throughput.py --device cpu --shape tiny --batches 2,4 --steps 4   # CPU
"""

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import Recorder, bench_parser, markdown_table
from torch.utils.data import DataLoader

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.data.loader import LOADER_WORKERS_ENV, default_loader_workers, frames_to_float
from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
from fedvla.engine.federation import task
from fedvla.engine.policy.speed import flow_loss, hold_frozen_in_bf16

NAME = "gpu_throughput"
CPU_NAME = "gpu_throughput_cpu"
"""Where a run on the CPU (--device cpu) writes, beside the GPU's results."""
COMMAND = "HF_HUB_OFFLINE=1 python bench/gpu_throughput.py"
CAMERAS = ("front", "wrist")
TARGET_VS_LEROBOT = 1.0
TARGET_VS_COMPUTE = 0.9


@dataclass
class Setup:
    policy: Any
    preprocessor: Any
    data: task.ClientData
    device: str
    workers: int

    @property
    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def autocast(self) -> Any:
        bf16 = self.device == "cuda" and torch.cuda.is_bf16_supported()
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def build_setup(scratch: Path, args: Any) -> Setup:
    from lerobot.policies.smolvla import SmolVLAPolicy, make_smolvla_pre_post_processors

    spec = SyntheticSpec(
        episodes=args.episodes,
        frames_per_episode=args.frames,
        cameras=CAMERAS,
        image_shape=(args.height, args.width),
        use_videos=True,
        streaming_encoding=True,
    )
    if args.dataset is not None:
        root = args.dataset
    else:
        started = time.perf_counter()
        root = generate_dataset(scratch / "dataset", spec)
        print(f"dataset written in {time.perf_counter() - started:.1f} s", flush=True)
    config = policy_config(scratch, args.shape)
    ref = DatasetRef(repo_id=spec.repo_id, root=str(root))
    data = task.open_dataset(ref, chunk_size=config.chunk_size, owner=NAME)
    inputs, outputs = task.policy_features(data.features)
    config.input_features, config.output_features = inputs, outputs
    config.device = args.device
    torch.manual_seed(0)
    with torch.device(args.device):
        policy = SmolVLAPolicy(config)
    preprocessor, _ = make_smolvla_pre_post_processors(config, dataset_stats=data.stats)
    return Setup(policy, preprocessor, data, args.device, args.workers)


def policy_config(scratch: Path, shape: str) -> Any:
    if shape == "tiny":
        from fedvla.engine.policy.tiny import tiny_smolvla_config

        return tiny_smolvla_config(scratch / "data", state_dim=6, action_dim=6)
    from comm_bytes import smolvla_base_config, smolvlm2_folder

    return smolvla_base_config(smolvlm2_folder(scratch / "smolvlm2"))


def optimizer_for(setup: Setup, *, fused: bool) -> torch.optim.Optimizer:
    config = setup.policy.config
    return torch.optim.AdamW(
        setup.trainable,
        lr=config.optimizer_lr,
        betas=config.optimizer_betas,
        eps=config.optimizer_eps,
        weight_decay=config.optimizer_weight_decay,
        fused=fused,
    )


def timed_steps(
    setup: Setup, step: Callable[[], int], *, steps: int, warmup: int
) -> dict[str, Any]:
    """Run warm-up steps, then time `steps` steps; samples/s and peak GPU memory."""
    for _ in range(warmup):
        step()
    setup.sync()
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    samples = sum(step() for _ in range(steps))
    setup.sync()
    seconds = time.perf_counter() - started
    return {
        "samples_per_s": round(samples / seconds, 2),
        "seconds": round(seconds, 3),
        "samples": samples,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if setup.device == "cuda"
        else None,
    }


def train_step(
    setup: Setup, batch: dict[str, Any], optimizer: torch.optim.Optimizer, *, sync_free: bool
) -> int:
    policy = setup.policy
    with setup.autocast():
        if sync_free:
            loss = flow_loss(policy, batch)
        else:
            loss, _ = policy.forward(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(setup.trainable, policy.config.optimizer_grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad()
    if not sync_free:
        _ = loss.item()  # lerobot-train logs the loss every step
    return int(batch["observation.state"].shape[0])


def one_batch(setup: Setup, batch_size: int) -> dict[str, Any]:
    loader = DataLoader(setup.data.dataset, batch_size=batch_size, shuffle=True)
    raw = next(iter(loader))
    return frames_to_float(setup.preprocessor(raw), setup.data.camera_keys)


def compute_alone(
    setup: Setup, batch_size: int, *, fused: bool, sync_free: bool, steps: int, warmup: int
) -> dict[str, Any]:
    """One preprocessed batch on the device, reused every step."""
    batch = one_batch(setup, batch_size)
    setup.policy.train()
    optimizer = optimizer_for(setup, fused=fused)

    def step() -> int:
        return train_step(setup, dict(batch), optimizer, sync_free=sync_free)

    return timed_steps(setup, step, steps=steps, warmup=warmup)


def lerobot_feeding(setup: Setup, batch_size: int, *, steps: int, warmup: int) -> dict[str, Any]:
    """lerobot-train's loop: its DataLoader settings, uint8 frames to floats on the CPU."""
    loader = DataLoader(
        setup.data.dataset.dataset,
        num_workers=setup.workers,
        batch_size=batch_size,
        shuffle=True,
        pin_memory=setup.device == "cuda",
        drop_last=False,
        prefetch_factor=2 if setup.workers > 0 else None,
        persistent_workers=setup.workers > 0,
    )
    setup.policy.train()
    optimizer = optimizer_for(setup, fused=False)
    iterator = iter(loader)

    def step() -> int:
        nonlocal iterator
        try:
            raw = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            raw = next(iterator)
        for key in setup.data.camera_keys:
            if raw[key].dtype == torch.uint8:
                raw[key] = raw[key].to(dtype=torch.float32) / 255.0
        return train_step(setup, setup.preprocessor(raw), optimizer, sync_free=False)

    try:
        return timed_steps(setup, step, steps=steps, warmup=warmup)
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def fedvla_loop(setup: Setup, batch_size: int, *, steps: int, warmup: int) -> dict[str, Any]:
    """task.train as a federation's client calls it: a warm-up call (the first round), then the
    timed call (a later round: the feed and its workers persist)."""
    bundle = task.PolicyBundle(
        setup.policy, setup.preprocessor, None, setup.data.stats, setup.device
    )

    def run(n: int) -> task.TrainResult:
        return task.train(
            bundle, setup.data, steps=n, batch_size=batch_size, learning_rate=1e-4, seed=0
        )

    run(warmup)
    setup.sync()
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run(steps)
    setup.sync()
    seconds = time.perf_counter() - started
    setup.data.close()  # its workers would otherwise prefetch during the next measurement
    assert all(math.isfinite(v) for v in result.losses)
    return {
        "samples_per_s": round(result.samples / seconds, 2),
        "seconds": round(seconds, 3),
        "samples": result.samples,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if setup.device == "cuda"
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=["base", "tiny"], default="base")
    parser.add_argument("--batches", default="8,32,64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_loader_workers())
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument(
        "--dataset", type=Path, default=None, help="a dataset written earlier with these sizes"
    )
    parser.add_argument("--steps-batch", type=int, default=None, help="batch of the step table")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--compile-after-s", type=float, default=240.0, help="skip compiling after this long"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.batches, args.steps, args.warmup = "tiny", "2,4", 2, 1
        args.episodes, args.frames, args.height, args.width = 2, 10, 48, 64
    batches = [int(b) for b in args.batches.split(",")]
    steps_batch = args.steps_batch or batches[len(batches) // 2]
    recorder = Recorder(
        NAME if args.device == "cuda" else CPU_NAME,
        (__doc__ or "").splitlines()[0],
        " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]),
    )
    torch.set_num_threads(os.cpu_count() or 1)
    os.environ[LOADER_WORKERS_ENV] = str(args.workers)  # what task.train's feed reads
    results: dict[str, Any] = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "shape": args.shape,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "loader_workers": args.workers,
        "dataset": {
            "episodes": args.episodes,
            "frames_per_episode": args.frames,
            "cameras": list(CAMERAS),
            "image_shape": [args.height, args.width],
            "codec": "AV1 (lerobot's default encoder)",
        },
        "rows": {},
        "step_table": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        setup = build_setup(Path(tmp), args)
        results["params_total"] = sum(p.numel() for p in setup.policy.parameters())
        results["params_trainable"] = sum(p.numel() for p in setup.trainable)
        measure = dict(steps=args.steps, warmup=args.warmup)
        rows: dict[str, dict[str, Any]] = results["rows"]
        results["steps_batch"] = steps_batch

        def save() -> None:
            results["elapsed_s"] = round(time.perf_counter() - started, 1)
            recorder.write(results, render(results), out_dir=args.out_dir)

        for b in batches:  # lerobot's setup: float32 frozen VLM, plain AdamW, policy.forward
            rows[str(b)] = {
                "compute_lerobot_setup": compute_alone(
                    setup, b, fused=False, sync_free=False, **measure
                ),
                "lerobot": lerobot_feeding(setup, b, **measure),
            }
            print(b, rows[str(b)], flush=True)
            save()
        on_cuda = args.device == "cuda"
        table = results["step_table"]
        table.append(("lerobot setup", rows[str(steps_batch)]["compute_lerobot_setup"]))
        if on_cuda:
            table.append(
                (
                    "+ fused AdamW",
                    compute_alone(setup, steps_batch, fused=True, sync_free=False, **measure),
                )
            )
        table.append(
            (
                "+ loss without host sync",
                compute_alone(setup, steps_batch, fused=on_cuda, sync_free=True, **measure),
            )
        )
        save()
        if on_cuda and torch.cuda.is_bf16_supported():
            hold_frozen_in_bf16(setup.policy)
        for b in batches:  # fedvla's setup
            rows[str(b)]["compute_fedvla_setup"] = compute_alone(
                setup, b, fused=on_cuda, sync_free=True, **measure
            )
            rows[str(b)]["fedvla"] = fedvla_loop(setup, b, **measure)
            print(b, rows[str(b)], flush=True)
            save()
        if on_cuda:
            table.append(("+ frozen VLM in bf16", rows[str(steps_batch)]["compute_fedvla_setup"]))
        save()
        if args.compile and time.perf_counter() - started < args.compile_after_s:
            try:
                setup.policy.model = torch.compile(setup.policy.model)
                table.append(
                    (
                        "+ torch.compile (model)",
                        compute_alone(setup, steps_batch, fused=on_cuda, sync_free=True, **measure),
                    )
                )
            except Exception as error:  # report why compile did not pay rather than lose the run
                results["compile_error"] = f"{type(error).__name__}: {error}"[:500]
        elif args.compile:
            results["compile_error"] = "skipped: not enough time left"
    save()
    return 0


def render(results: dict[str, Any]) -> str:
    rows = []
    for batch, row in results["rows"].items():
        fedvla = row.get("fedvla", {}).get("samples_per_s")
        lerobot = row["lerobot"]["samples_per_s"]
        compute = row.get("compute_fedvla_setup", {}).get("samples_per_s")
        rows.append(
            [
                batch,
                fedvla if fedvla is not None else "-",
                lerobot,
                row["compute_lerobot_setup"]["samples_per_s"],
                compute if compute is not None else "-",
                round(fedvla / lerobot, 2) if fedvla else "-",
                round(fedvla / compute, 2) if fedvla and compute else "-",
                row.get("fedvla", {}).get("peak_gpu_memory_gib", "-"),
                row["lerobot"]["peak_gpu_memory_gib"],
            ]
        )
    where = results["gpu"] or f"CPU ({results['device']})"
    text = (
        f"{where}, {results['shape']} shape ({results['params_trainable'] / 1e6:.1f}M trainable "
        f"of {results['params_total'] / 1e6:.1f}M), {results['loader_workers']} loader workers, "
        f"{results['steps']} timed steps after {results['warmup_steps']}; samples/s.\n\n"
    )
    text += markdown_table(
        [
            "batch",
            "fedvla client loop",
            "lerobot-train's feeding",
            "compute alone (lerobot setup)",
            "compute alone (fedvla setup)",
            "fedvla / lerobot",
            "fedvla / compute (fedvla setup)",
            "fedvla peak GiB",
            "lerobot peak GiB",
        ],
        rows,
    )
    if results["step_table"]:
        text += "\nCompute alone, one change at a time (samples/s, peak GiB):\n\n"
        text += markdown_table(
            ["setup", "samples/s", "peak GiB"],
            [[n, r["samples_per_s"], r["peak_gpu_memory_gib"]] for n, r in results["step_table"]],
        )
    return text


if __name__ == "__main__":
    raise SystemExit(main())
