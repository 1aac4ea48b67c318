"""Client memory: does a federation's memory grow with its number of virtual clients?

The engine's real run_federation (Flower simulation on Ray) trains a medium SmolVLA (see
federation_overhead.py: a local pretrained_model folder, random weights) for 2 rounds of 1
local step with 2, 4, 8, 16 and 32 virtual clients (an iid partition of one dataset), on
as many Ray actors as the CPUs allow. Each federation runs in a fresh process; a sampler adds up
the proportional set size (PSS: shared pages split among the processes that map them) of that
process and all its descendants (Ray's processes and client actors) every 0.2 s: the peak is
the federation's peak memory, also split by process role at that moment: the server (the
federation process: Flower's ServerApp, its in-memory LinkState and Ray's driver), the client
actors (with any loader workers they fork), the raylet (its object store) and Ray's other
processes. Round seconds come from the engine's own round reports (round 1 builds the policy and
each client's data; round 2 only assigns weights and trains).
With --baseline ROOT, the same runs at the sizes --baseline-clients names also use the engine
found at ROOT (for example a checkout of the commit before this change), measured in the same
session. Target: peak memory from 2 to 32 clients grows by less than 10%.
Writes bench/results/client_memory.{json,md}.

    .venv/bin/python bench/client_memory.py [--clients 2,32,8] [--baseline /path/to/old/checkout]
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil
from common import ROOT, Recorder, bench_parser, markdown_table
from federation_overhead import write_medium_policy

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

NAME = "client_memory"
COMMAND = ".venv/bin/python bench/client_memory.py"
TARGET_GROWTH = 0.10
SAMPLE_EVERY_S = 0.2
RUN_TIMEOUT_S = 1800
ATTEMPTS = 3
CRASHED = "Simulation Runtime crashed"
CRASH_GRACE_S = 30
"""Runs per federation size before giving up: Ray's start times out (30 s) on a loaded VM."""

CHILD = """
import json, sys
from pathlib import Path
from fedvla.core.experiment_config import FederationConfig
from fedvla.engine.federation.runner import run_federation

class Rounds:
    def __init__(self): self.rounds = []
    def log(self, message): pass
    def round_finished(self, report): self.rounds.append(report)
    def checkpoint_saved(self, report): pass
    def checkpoint_removed(self, round): pass

config = FederationConfig.model_validate_json(Path(sys.argv[1]).read_text())
reporter = Rounds()
run_federation(config, reporter, output_dir=Path(sys.argv[2]), data_dir=Path(sys.argv[3]))
rounds = [r for r in reporter.rounds if r.round > 0]
Path(sys.argv[4]).write_text(json.dumps({
    "round_seconds": [r.duration_s for r in rounds],
    "clients_ok": [r.clients_succeeded for r in rounds],
    "load_seconds": [[c.load_seconds for c in r.clients] for r in rounds],
}))
"""


def role(process: psutil.Process, root: psutil.Process) -> str:
    """The role of one of the federation's processes (see the module's docstring)."""
    if process.pid == root.pid:
        return "server"
    command = " ".join(process.cmdline())
    if command.startswith("ray::ClientAppActor"):  # loader workers keep their actor's title
        return "client actors"
    if "raylet" in command:
        return "raylet"
    return "ray other"


def tree_pss(root: psutil.Process) -> dict[str, int]:
    """PSS by role of a process and its descendants, in bytes (processes that vanish count 0)."""
    by_role: dict[str, int] = {}
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return by_role
    for process in processes:
        with contextlib.suppress(psutil.Error):
            pss = process.memory_full_info().pss
            name = role(process, root)
            by_role[name] = by_role.get(name, 0) + pss
    return by_role


def wait_or_stop(child: subprocess.Popen[bytes], log: Path) -> int:
    """The child's exit code; a simulation that crashed (it can hang in Ray's shutdown for
    minutes) or ran past RUN_TIMEOUT_S is killed with its Ray processes."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    crashed_at = None
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return child.wait(timeout=5)
        if crashed_at is None and CRASHED in log.read_text(errors="replace"):
            crashed_at = time.monotonic()
        stuck = crashed_at is not None and time.monotonic() - crashed_at > CRASH_GRACE_S
        if stuck or time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            return child.wait()


def run_measured(engine_root: Path, config: FederationConfig, work: Path) -> dict[str, Any]:
    """One federation in a fresh process using the engine at engine_root; its peak memory."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(config.model_dump_json())
    result_file = work / "result.json"
    env = {**os.environ, "PYTHONPATH": str(engine_root), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(work / "config.json"),
            str(work / "out"),
            str(work.parent / "data"),
            str(result_file),
        ],
        cwd=engine_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "log", "w"),  # noqa: SIM115 - closed with the process
        start_new_session=True,  # its Ray processes go with it if it must be stopped
    )
    peak = 0
    at_peak: dict[str, int] = {}
    role_peaks: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, at_peak
        process = psutil.Process(child.pid)
        while not stop.is_set():
            by_role = tree_pss(process)
            if sum(by_role.values()) > peak:
                peak, at_peak = sum(by_role.values()), by_role
            for name, pss in by_role.items():
                role_peaks[name] = max(role_peaks.get(name, 0), pss)
            stop.wait(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = wait_or_stop(child, work / "log")
    stop.set()
    sampler.join()
    if code != 0:
        tail = (work / "log").read_text()[-2000:]
        raise RuntimeError(f"federation of {config.num_clients} clients failed ({code}): {tail}")
    result = json.loads(result_file.read_text())
    return {
        "clients": config.num_clients,
        "peak_pss_gib": round(peak / 2**30, 3),
        "at_peak_gib": {k: round(v / 2**30, 3) for k, v in sorted(at_peak.items())},
        "role_peak_gib": {k: round(v / 2**30, 3) for k, v in sorted(role_peaks.items())},
        "run_wall_seconds": round(time.perf_counter() - started, 1),
        "round_seconds": [round(s, 2) for s in result["round_seconds"]],
        "clients_ok": result["clients_ok"],
        "load_seconds_round_1_sum": round(sum(result["load_seconds"][0]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--clients", default="2,4,8,16,32")
    parser.add_argument("--baseline", type=Path, default=None, help="an older engine checkout")
    parser.add_argument("--baseline-clients", default="2,4,8")
    parser.add_argument(
        "--baseline-label", default="before", help="what the baseline is, for the README row"
    )
    args = parser.parse_args(argv)
    sizes = [int(c) for c in args.clients.split(",")]
    if args.quick:
        sizes = [2, 4]
    recorder = Recorder(NAME, (__doc__ or "").splitlines()[0], COMMAND)
    results: dict[str, Any] = {"engine": [], "baseline": [], "baseline_root": None}
    with tempfile.TemporaryDirectory(prefix="bench-client-memory-") as scratch:
        work = Path(scratch)
        spec = SyntheticSpec(episodes=max(sizes) + 4, frames_per_episode=8)
        dataset = DatasetRef(
            repo_id=spec.repo_id, root=str(generate_dataset(work / "synthetic", spec))
        )
        from fedvla.engine.federation.task import open_dataset

        features = open_dataset(dataset, chunk_size=1, owner="bench").features
        policy = "tiny" if args.quick else str(write_medium_policy(work / "medium", features))
        results["policy"] = "tiny" if args.quick else "medium"

        def config(clients: int) -> FederationConfig:
            return FederationConfig(
                policy=policy,
                num_rounds=2,
                min_clients=clients,
                local_steps=1,
                batch_size=2,
                eval_every=0,
                checkpoint_every=0,
                keep_checkpoints=1,
                client_num_cpus=1.0,
                device="cpu",
                partition=Partition(dataset=dataset, num_clients=clients, scheme="iid"),
            )

        runs: list[tuple[str, Path, list[int]]] = [("engine", ROOT, sizes)]
        if args.baseline is not None:
            results["baseline_root"] = str(args.baseline)
            results["baseline_label"] = args.baseline_label
            baseline_sizes = [int(c) for c in args.baseline_clients.split(",")]
            runs.append(("baseline", args.baseline, baseline_sizes))
        for name, engine_root, counts in runs:
            for clients in counts:
                entry = None
                for attempt in range(ATTEMPTS):
                    try:
                        entry = run_measured(
                            engine_root, config(clients), work / f"{name}-{clients}-{attempt}"
                        )
                        break
                    except RuntimeError as error:  # Ray's start can time out on a loaded machine
                        print(f"attempt {attempt + 1} failed: {str(error)[-300:]}", flush=True)
                if entry is None:
                    raise RuntimeError(f"{name} with {clients} clients failed {ATTEMPTS} times")
                results[name].append(entry)
                print(name, json.dumps(entry), flush=True)
                write(recorder, results, args.out_dir)
    return 0


ROLES = ["server", "client actors", "raylet", "ray other"]


def write(recorder: Recorder, results: dict[str, Any], out_dir: Path) -> None:
    """Save what is measured so far (after every federation: a run cut short keeps it)."""
    engine = sorted(results["engine"], key=lambda e: e["clients"])
    fewest, most = engine[0], engine[-1]
    growth = most["peak_pss_gib"] / fewest["peak_pss_gib"] - 1
    met = growth < TARGET_GROWTH and most["clients"] >= 32
    results["target"] = {
        "growth_max": TARGET_GROWTH,
        "measured": round(growth, 4),
        "met": met,
        "from_clients": fewest["clients"],
        "to_clients": most["clients"],
    }
    rows = [
        [
            name,
            e["clients"],
            e["peak_pss_gib"],
            *(e.get("at_peak_gib", {}).get(r, "-") for r in ROLES),
            e["round_seconds"][0],
            e["round_seconds"][-1],
            e["load_seconds_round_1_sum"],
            e["run_wall_seconds"],
        ]
        for name in ("engine", "baseline")
        for e in sorted(results[name], key=lambda e: e["clients"])
    ]
    table = markdown_table(
        [
            "engine",
            "virtual clients",
            "peak memory GiB (PSS, all processes)",
            *(f"of it: {r} GiB" for r in ROLES),
            "round 1 s",
            "round 2 s",
            "load s in round 1 (sum over clients)",
            "whole run s",
        ],
        rows,
    )
    table += "\n" + markdown_table(
        ["target", "measured", "result"],
        [
            [
                f"peak memory {fewest['clients']} -> {most['clients']} clients "
                f"grows < {TARGET_GROWTH:.0%}",
                f"{growth:+.1%}",
                met,
            ]
        ],
    )
    recorder.write(results, table, out_dir=out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
