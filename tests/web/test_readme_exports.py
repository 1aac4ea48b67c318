"""The README's export and log download lines, run as written with curl against a real server."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import Role
from fedvla.core.services import run_files
from tests.factories import finished_run, make_token
from tests.test_readme import README
from tests.web.test_readme_curl import server  # noqa: F401 - the real server fixture

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def export_lines() -> list[str]:
    block = re.search(r"# A run's rounds as a spreadsheet.*?\n```", README, re.DOTALL)
    assert block is not None, "the README lost its export lines"
    text = block.group(0).removesuffix("```").replace("\\\n", " ")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_export_and_log_lines_work(
    server: str,  # noqa: F811
    session: Session,
    settings: Settings,
    tmp_path: Path,
) -> None:
    run = finished_run(session, settings, tmp_path / "checkpoint")
    log = run_files.log_path(settings, run.storage_key)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("federation started\nround 1 done\n")
    script = "\n".join(export_lines()).replace("runs/1/", f"runs/{run.id}/")
    script = script.replace("run-1-", f"run-{run.id}-")
    work = tmp_path / "downloads"
    work.mkdir()
    env = {
        **os.environ,
        "API": server,
        "AUTH": f"Authorization: Bearer {make_token(session, Role.viewer)}",
    }

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = (work / f"run-{run.id}-rounds.csv").read_text().splitlines()
    header = rows[0].split(",")
    row = dict(zip(header, rows[1].split(","), strict=True))
    assert header[:2] == ["round", "eval_loss"] and "fed_eval_loss" in header
    assert (row["round"], row["eval_loss"], row["train_loss"]) == ("1", "0.4", "0.5")
    assert (work / f"run-{run.id}-federation.log").read_text() == log.read_text()
