"""The worker samples its federation's memory, CPU and (where nvidia-smi answers) GPU use while a
real tiny-policy run trains, stores each sample as a ``resources`` event, and the API serves them
under the run's role rules."""

import contextlib
import shutil
import subprocess
import sys

import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import Role, RunStatus
from fedvla.core.services import runs
from fedvla.core.services.events import EventPublisher, events_of_kind
from fedvla.orchestration.celery_app import RUN_TASK
from fedvla.orchestration.dispatch import run_sender
from fedvla.orchestration.resources import TreeSampler
from fedvla.orchestration.tasks import make_worker_celery
from tests.factories import make_site

NO_REDIS = EventPublisher("")


def _kill_tree(parent: "subprocess.Popen[str]") -> None:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
    parent.kill()
    parent.wait()


def test_a_sample_counts_the_whole_process_tree() -> None:
    """A parent and the child it started, each holding about 64 MiB: the tree's RSS has both."""
    code = (
        "import subprocess, sys, time\n"
        "block = b'x' * (64 * 2**20)\n"  # written, so resident
        "child = subprocess.Popen([sys.executable, '-c', "
        "\"import time; block = b'x' * (64 * 2**20); print('ready', flush=True); "
        'time.sleep(60)"])\n'
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert [parent.stdout.readline().strip() for _ in range(2)] == ["ready", "ready"]
        sampler = TreeSampler(parent.pid, nvidia_smi="")
        sample = sampler.sample()
        assert sample is not None and sample.processes == 2
        assert sample.memory_bytes > 2 * 64 * 2**20
        assert sample.cpu_percent is None  # CPU use is measured between two samples
        again = sampler.sample()
        assert again is not None and again.cpu_percent is not None and again.cpu_percent >= 0
        assert sample.gpu_memory_bytes is None and "gpu_memory_bytes" not in sample.as_data()
    finally:
        _kill_tree(parent)
    assert TreeSampler(parent.pid, nvidia_smi="").sample() is None  # gone: no sample


def test_forked_processes_sharing_pages_count_them_once() -> None:
    """A process holding 128 MiB forks a child that shares those pages: their RSS adds up to
    twice that, the sample (PSS) to about once."""
    code = (
        "import os, sys, time\n"
        "block = b'x' * (128 * 2**20)\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        tree = [psutil.Process(parent.pid), *psutil.Process(parent.pid).children()]
        assert len(tree) == 2
        rss = sum(p.memory_info().rss for p in tree)
        sample = TreeSampler(parent.pid, nvidia_smi="").sample()
        assert sample is not None and sample.processes == 2
        assert rss > 2 * 128 * 2**20
        assert 128 * 2**20 < sample.memory_bytes < 1.4 * 128 * 2**20
    finally:
        _kill_tree(parent)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_worker_samples_its_federation_while_it_runs(
    engine: Engine,
    fast_settings: Settings,
    make_experiment,
    client: TestClient,
    admin: dict[str, str],
    bearer,
    session: Session,
) -> None:
    settings = fast_settings.model_copy(update={"resource_sample_interval_s": 0.5})
    experiment = make_experiment(num_rounds=2)
    with Session(engine) as s:
        run = runs.launch_run(
            s, run_sender(settings), NO_REDIS, experiment_id=experiment.id, actor="tests"
        )
        assert run.id is not None
        run_id = run.id

    result = make_worker_celery(settings).tasks[RUN_TASK].apply(args=[run_id])

    assert result.get() == RunStatus.succeeded.value
    with Session(engine) as s:
        samples = [e.data for e in events_of_kind(s, run_id, "resources")]
    assert samples, "no resource sample while the federation ran"
    assert all(sample["memory_bytes"] > 0 and sample["processes"] >= 1 for sample in samples)
    if not shutil.which("nvidia-smi"):  # no GPU to read: absent, never a zero
        assert all("gpu_memory_bytes" not in sample for sample in samples)

    answer = client.get(f"/api/v1/runs/{run_id}/resources", headers=admin)
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == len(samples)
    assert [d["memory_bytes"] for d in body["data"]] == [s["memory_bytes"] for s in samples]
    outsider = bearer(Role.operator, make_site(session).id)
    assert client.get(f"/api/v1/runs/{run_id}/resources", headers=outsider).status_code == 403
