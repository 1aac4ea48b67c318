"""The supervisor's process mechanics, with small real child programs in place of a federation:
exit codes and error text, cancel killing the whole process group, the parent watch."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import Experiment, Run, RunStatus
from fedvla.core.services import runs
from fedvla.core.services.events import EventPublisher, events_after
from fedvla.orchestration.supervisor import Outcome, last_error_line, supervise
from tests.orchestration.conftest import wait_for

NO_REDIS = EventPublisher("")


def _running_run(engine: Engine, experiment: Experiment) -> int:
    with Session(engine) as session:
        assert experiment.id is not None
        config = runs.freeze_config(session, experiment)
        run = Run(experiment_id=experiment.id, config=config.model_dump(mode="json"))
        session.add(run)
        session.commit()
        assert run.id is not None
        run_id = run.id
        assert runs.claim_run(session, NO_REDIS, run_id, "test-worker")
    return run_id


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_success_marks_the_run_succeeded(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    run_id = _running_run(engine, make_experiment())

    outcome = supervise(engine, fast_settings, run_id, _python("print('trained')"))

    assert outcome == Outcome(RunStatus.succeeded)
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert (run.status, run.error) == (RunStatus.succeeded, None)
        assert run.finished_at is not None
        kinds = [(e.kind, e.data.get("status")) for e in events_after(session, run_id)]
    assert kinds == [("status", "running"), ("log", None), ("status", "succeeded")]


def test_failure_records_exit_code_and_the_exception_line(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    run_id = _running_run(engine, make_experiment())
    crash = """
        def load_dataset():
            raise FileNotFoundError("dataset lab-a/pick not found at /data/pick")
        print("loading")
        load_dataset()
    """

    outcome = supervise(engine, fast_settings, run_id, _python(crash))

    expected = (
        "federation process exited with code 1: "
        "FileNotFoundError: dataset lab-a/pick not found at /data/pick"
    )
    assert outcome == Outcome(RunStatus.failed, expected)
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert (run.status, run.error) == (RunStatus.failed, expected)


def test_a_child_killed_by_a_signal_says_so(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    run_id = _running_run(engine, make_experiment())

    outcome = supervise(
        engine, fast_settings, run_id, _python("import os, signal; os.kill(os.getpid(), 9)")
    )

    assert outcome.status == RunStatus.failed
    assert outcome.error is not None
    assert outcome.error.startswith("federation process killed by SIGKILL")


def test_cancel_kills_the_whole_process_group(
    engine: Engine, fast_settings: Settings, make_experiment, tmp_path: Path
) -> None:
    """The child starts a grandchild (as Ray would) and ignores SIGTERM; both must die."""
    run_id = _running_run(engine, make_experiment())
    pids = tmp_path / "pids"
    child = f"""
        import os, signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen(["sleep", "300"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{grandchild.pid}}")
        time.sleep(300)
    """
    outcomes: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: outcomes.append(supervise(engine, fast_settings, run_id, _python(child)))
    )
    thread.start()
    wait_for(lambda: pids.exists() and pids.read_text(), 30, "the child to start")
    child_pid, grandchild_pid = map(int, pids.read_text().split())

    with Session(engine) as session:
        cancelled = runs.cancel_run(session, NO_REDIS, run_id, actor="alice")
    thread.join(timeout=30)

    assert cancelled.status == RunStatus.cancelled
    assert outcomes == [Outcome(RunStatus.cancelled)]
    assert not _alive(child_pid)
    assert not _alive(grandchild_pid)
    with Session(engine) as session:
        messages = [e.message for e in events_after(session, run_id)]
    assert messages[1] == f"federation process {child_pid} started"
    assert messages[2] == "cancelled by alice"
    assert messages[3].startswith("federation process stopped (cancelled)")


def test_the_federation_dies_with_its_worker(tmp_path: Path) -> None:
    """kill -9 of the supervising process: the child's parent watch takes its group down."""
    pid_file = tmp_path / "child.pid"
    parent = f"""
        import subprocess, sys, time
        code = (
            "import os, time; from fedvla.orchestration.run_child import watch_parent;"
            "watch_parent(os.getppid(), every_s=0.1);"
            "open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
        )
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        time.sleep(300)
    """
    worker = subprocess.Popen(_python(parent))
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the child to start")
        child_pid = int(pid_file.read_text())
        assert _alive(child_pid)

        worker.kill()
        worker.wait()

        wait_for(lambda: not _alive(child_pid), 10, "the orphaned child to stop")
    finally:
        worker.kill()


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("", ""),
        ("just a line\n", "just a line"),
        (
            "Traceback (most recent call last):\n  File 'x', line 1\n"
            "ValueError: first\nlater noise\n"
            "Traceback (most recent call last):\n  File 'y', line 2\n    raise\n"
            "RuntimeError: second\n",
            "RuntimeError: second",
        ),
    ],
)
def test_last_error_line(tmp_path: Path, log: str, expected: str) -> None:
    path = tmp_path / "federation.log"
    path.write_text(log)
    assert last_error_line(path) == expected


def test_a_worker_stopping_mid_run_stops_the_child_and_fails_the_run(
    engine: Engine, fast_settings: Settings, make_experiment, tmp_path: Path
) -> None:
    """Celery's cold shutdown raises SystemExit in the task; here a timer raises it."""
    run_id = _running_run(engine, make_experiment())
    pid_file = tmp_path / "child.pid"
    child = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )

    def shutdown(_signum: int, _frame: object) -> None:
        if not pid_file.exists():
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            return
        raise SystemExit("cold shutdown")

    previous = signal.signal(signal.SIGALRM, shutdown)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(SystemExit):
            supervise(engine, fast_settings, run_id, _python(child))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert not _alive(int(pid_file.read_text()))
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert run.status == RunStatus.failed
        assert run.error == "worker stopped while the federation ran (SystemExit)"
