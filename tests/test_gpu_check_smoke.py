"""The GPU check script runs its whole path on the CPU with tiny sizes (its CUDA run is a bench)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--device",
            "cpu",
            "--tiny-steps",
            "2",
            "--base-steps",
            "0",
            "--out",
            str(out),
        ],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "FEDVLA_DATA_DIR": str(tmp_path)},
        cwd=tmp_path,
        timeout=600,
    )
    tiny = json.loads(out.read_text())["tiny"]
    assert tiny["device"] == "cpu"
    assert tiny["reloaded_action_shape"] == [2, 6]
    assert tiny["reloaded_action_finite"] is True
    assert len(tiny["checkpoint_sha256"]) == 64
