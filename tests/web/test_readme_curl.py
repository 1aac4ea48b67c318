"""The README's checkpoint download lines, run as written with curl against a real server."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import Role
from tests.factories import finished_run, make_token
from tests.test_readme import README

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def download_lines() -> list[str]:
    """The README's commands from the checkpoint comment to the end of that block, with their
    continuation lines joined."""
    block = re.search(r"# The checkpoint as a lerobot.*?\n```", README, re.DOTALL)
    assert block is not None, "the README lost its checkpoint download lines"
    text = block.group(0).removesuffix("```").replace("\\\n", " ")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/api/v1"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_readme_download_lines_work_and_resume(
    server: str, session: Session, settings: Settings, tmp_path: Path
) -> None:
    run = finished_run(session, settings, tmp_path / "checkpoint")
    secret = make_token(session, Role.viewer)
    ids = {"runs/4/": f"runs/{run.id}/", "checkpoints/5/": "checkpoints/1/"}
    ids["run-4-round-5"] = f"run-{run.id}-round-1"
    script = "\n".join(download_lines())
    for old, new in ids.items():
        script = script.replace(old, new)
    work = tmp_path / "downloads"
    work.mkdir()
    env = {**os.environ, "API": server, "AUTH": f"Authorization: Bearer {secret}"}

    def run_script() -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run_script()
    archive = work / f"run-{run.id}-round-1-pretrained_model.tar"
    digest = re.search(r"x-checksum-sha256: *([0-9a-f]{64})", first, re.IGNORECASE)
    assert digest is not None and f"{digest.group(1)}  {archive.name}" in first
    weights = work / f"run-{run.id}-round-1-model.safetensors"
    assert weights.read_bytes() == b"weights"
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) // 2])  # a broken download ...
    weights.unlink()

    again = run_script()  # ... resumed by the same line

    assert archive.read_bytes() == whole
    assert f"{digest.group(1)}  {archive.name}" in again
