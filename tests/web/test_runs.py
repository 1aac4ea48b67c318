"""Run pages: progress, per-round and per-client tables, checkpoints, cancel/resume, compare."""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.models import Run, RunStatus
from fedvla.core.services import runs as run_service
from fedvla.core.services.events import publisher_for
from fedvla.engine.federation.reporter import CheckpointReport, ClientReport, RoundReport
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.dispatch import run_sender
from tests.factories import make_experiment, simulation_body
from tests.web.conftest import Browser, Secrets, html


def launch(session: Session, settings: Settings, experiment_id: int) -> Run:
    return run_service.launch_run(
        session, run_sender(settings), publisher_for(""), experiment_id=experiment_id, actor="tests"
    )


def report_rounds(settings: Settings, run_id: int, rounds: int, folder: Path) -> str:
    """Rounds and a checkpoint, written by the worker's DbReporter; the weights' sha256."""
    reporter = DbReporter(settings.database_url, "", run_id)
    try:
        reporter.log("federation started")
        for number in range(1, rounds + 1):
            clients = [
                ClientReport(
                    client=f"client-{i}", site_id=None, ok=True, train_loss=1.0 / number + i,
                    samples=16, episodes=2, seconds=1.5, bytes_sent=1000, bytes_received=2000,
                )
                for i in range(2)
            ]  # fmt: skip
            reporter.round_finished(
                RoundReport(round=number, train_loss=1.0 / number, eval_loss=2.0 / number,
                            duration_s=3.0, bytes_sent=4000, bytes_received=2000,
                            clients_sampled=2, clients_succeeded=2, clients_failed=0,
                            clients=clients)
            )  # fmt: skip
        model = folder / "pretrained_model"
        model.mkdir(parents=True)
        weights = b"weights of round %d" % rounds
        (model / "model.safetensors").write_bytes(weights)
        (model / "config.json").write_text("{}")
        digest = hashlib.sha256(weights).hexdigest()
        reporter.checkpoint_saved(
            CheckpointReport(round=rounds, path=str(model), sha256=digest,
                             size_bytes=len(weights), eval_loss=2.0 / rounds)
        )  # fmt: skip
    finally:
        reporter.close()
    return digest


@pytest.fixture
def running_run(session: Session, settings: Settings) -> Run:
    experiment = make_experiment(session, simulation_body(num_rounds=4))
    assert experiment.id is not None
    run = launch(session, settings, experiment.id)
    assert run.id is not None
    assert run_service.claim_run(session, publisher_for(""), run.id, "worker-1")
    session.refresh(run)
    return run


def test_run_page_shows_progress_tables_and_checkpoints(
    browser: Callable[..., Browser],
    secrets: Secrets,
    session: Session,
    settings: Settings,
    running_run: Run,
    tmp_path: Path,
) -> None:
    assert running_run.id is not None
    digest = report_rounds(settings, running_run.id, 2, tmp_path / "ckpt")
    b = browser(secrets.viewer)
    page = b.get(f"/runs/{running_run.id}")
    soup = html(page)
    assert "Round 2 of 4" in soup.find("label", attrs={"for": "run-progress"}).text
    assert soup.find("progress")["value"] == "50"
    assert "to go" in soup.select_one(".progress .muted").text  # ETA from the mean round time
    rows = soup.select("#rounds-table tbody tr")
    assert [r.find("td").text for r in rows] == ["1", "2"]
    assert len(soup.select("#clients-table tbody tr")) == 4
    assert soup.select_one("#checkpoints-table code.sha256").text == digest
    link = soup.select_one('#checkpoints-table a[href$="model.safetensors"]')
    download = b.get(link["href"])
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == digest
    data = json.loads(soup.find(id="run-chart-data").text)
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert {c["client"] for c in data["clients"]} == {"client-0", "client-1"}
    stream = soup.find(id="run-stream")
    assert stream["sse-connect"].startswith(f"/api/v1/runs/{running_run.id}/events?after_id=")
    assert "federation started" in soup.find(id="run-log").text
    assert page.headers["link"].startswith(f"</api/v1/runs/{running_run.id}>")


def test_live_fragment_for_htmx(
    browser: Callable[..., Browser], secrets: Secrets, running_run: Run
) -> None:
    fragment = browser(secrets.viewer).get(
        f"/runs/{running_run.id}", headers={"HX-Request": "true"}
    )
    assert (
        '<section id="run-status"' in fragment.text and '<section id="run-tables"' in fragment.text
    )
    assert "<html" not in fragment.text
    assert "sse:round" in fragment.text


def test_event_stream_authenticates_with_the_session_cookie(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, running_run: Run
) -> None:
    assert running_run.id is not None
    run_service.finish_run(session, publisher_for(""), running_run.id, RunStatus.succeeded)
    b = browser(secrets.viewer)
    with b.client.stream("GET", f"/api/v1/runs/{running_run.id}/events") as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert "event: status" in body and "event: end" in body
    anonymous = browser(None)
    assert anonymous.get(f"/api/v1/runs/{running_run.id}/events").status_code == 401


def test_cancel_button_for_admins_only_and_viewers_refused(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, running_run: Run
) -> None:
    viewer = browser(secrets.viewer)
    assert html(viewer.get(f"/runs/{running_run.id}")).find("button", string="Cancel run") is None
    assert viewer.post(f"/runs/{running_run.id}/cancel").status_code == 403
    session.refresh(running_run)
    assert running_run.status == RunStatus.running

    admin = browser(secrets.admin)
    assert html(admin.get(f"/runs/{running_run.id}")).find("button", string="Cancel run")
    response = admin.post(f"/runs/{running_run.id}/cancel")
    assert response.status_code == 303
    session.refresh(running_run)
    assert running_run.status == RunStatus.cancelled
    page = admin.get(f"/runs/{running_run.id}")
    assert html(page).find("button", string="Cancel run") is None
    again = admin.post(f"/runs/{running_run.id}/cancel")
    assert again.status_code == 409
    assert "already finished" in html(again).find("h1").text


def fail_and_resume(
    admin: Browser, session: Session, settings: Settings, run: Run, rounds: int, folder: Path
) -> Run:
    """The run reports ``rounds`` rounds and a checkpoint of the last, fails, and the admin
    resumes it from that checkpoint on its page; the new run."""
    assert run.id is not None
    report_rounds(settings, run.id, rounds, folder)
    run_service.finish_run(session, publisher_for(""), run.id, RunStatus.failed, "boom")
    page = html(admin.get(f"/runs/{run.id}"))
    assert page.find("button", string=f"Resume from round {rounds}") is not None
    assert admin.post(f"/runs/{run.id}/resume", {"round": str(rounds)}).status_code == 303
    return session.exec(select(Run).where(Run.resumed_from_run_id == run.id)).one()


def test_resume_from_a_checkpoint(
    browser: Callable[..., Browser],
    secrets: Secrets,
    session: Session,
    settings: Settings,
    running_run: Run,
    tmp_path: Path,
) -> None:
    admin = browser(secrets.admin)
    resumed = fail_and_resume(admin, session, settings, running_run, 2, tmp_path / "ckpt")
    assert resumed.resumed_from_round == 2
    assert (
        html(browser(secrets.viewer).get(f"/runs/{running_run.id}")).find(
            "button", string="Resume from round 2"
        )
        is None
    )
    assert (
        browser(secrets.viewer).post(f"/runs/{running_run.id}/resume", {"round": "2"}).status_code
        == 403
    )


def test_a_resumed_run_that_ran_its_last_round_is_complete_and_offers_no_resume(
    browser: Callable[..., Browser],
    secrets: Secrets,
    session: Session,
    settings: Settings,
    running_run: Run,
    tmp_path: Path,
) -> None:
    admin = browser(secrets.admin)
    resumed = fail_and_resume(admin, session, settings, running_run, 3, tmp_path / "first")
    assert resumed.id is not None and running_run.id is not None
    assert run_service.claim_run(session, publisher_for(""), resumed.id, "worker-1")
    reporter = DbReporter(settings.database_url, "", resumed.id)
    reporter.round_finished(RoundReport(4, 0.5, 0.4, 1.0, 10, 10, 1, 1, 0, []))
    model = tmp_path / "last" / "pretrained_model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"last")
    digest = hashlib.sha256(b"last").hexdigest()
    reporter.checkpoint_saved(CheckpointReport(4, str(model), digest, 4, 0.4))
    reporter.close()
    run_service.finish_run(session, publisher_for(""), resumed.id, RunStatus.succeeded)

    soup = html(admin.get(f"/runs/{resumed.id}"))

    label = soup.find("label", attrs={"for": "run-progress"}).text
    assert "Round 4 of 4" in label and "resumed from round 3" in label
    assert soup.find("progress")["value"] == "100"
    assert soup.find("button", string="Resume from round 4") is None
    assert "final round" in soup.select_one("#checkpoints-table").text
    earlier = html(admin.get(f"/runs/{running_run.id}"))
    assert earlier.find("button", string="Resume from round 3") is not None


def test_cancel_and_resume_ask_for_confirmation(
    browser: Callable[..., Browser],
    secrets: Secrets,
    settings: Settings,
    running_run: Run,
    tmp_path: Path,
) -> None:
    assert running_run.id is not None
    report_rounds(settings, running_run.id, 2, tmp_path / "ckpt")

    soup = html(browser(secrets.admin).get(f"/runs/{running_run.id}"))

    cancel = soup.find("form", action=f"/runs/{running_run.id}/cancel")
    assert cancel is not None and f"Cancel run {running_run.id}?" in cancel["hx-confirm"]
    resume = soup.find("form", action=f"/runs/{running_run.id}/resume")
    assert resume is not None and "from round 2" in resume["hx-confirm"]
    # their sections disinherit htmx attributes: each form is boosted itself, or htmx would
    # not see it and its confirmation
    assert cancel["hx-boost"] == resume["hx-boost"] == "true"


def test_round_0_is_the_evaluation_before_training_not_a_charted_round(
    browser: Callable[..., Browser],
    secrets: Secrets,
    settings: Settings,
    running_run: Run,
    tmp_path: Path,
) -> None:
    assert running_run.id is not None
    reporter = DbReporter(settings.database_url, "", running_run.id)
    reporter.round_finished(RoundReport(0, None, 2.5, 0.0, 0, 0, 0, 0, 0, []))
    reporter.close()
    report_rounds(settings, running_run.id, 1, tmp_path / "ckpt")
    b = browser(secrets.viewer)

    soup = html(b.get(f"/runs/{running_run.id}"))

    rows = soup.select("#rounds-table tbody tr")
    assert [r.find("td").text for r in rows] == ["0 (before training)", "1"]
    data = json.loads(soup.find(id="run-chart-data").text)
    assert [r["round"] for r in data["rounds"]] == [1]
    assert "Round 1 of 4" in soup.find("label", attrs={"for": "run-progress"}).text


def test_compare_overlays_two_runs(
    browser: Callable[..., Browser],
    secrets: Secrets,
    session: Session,
    settings: Settings,
    running_run: Run,
    tmp_path: Path,
) -> None:
    assert running_run.id is not None
    other = launch(session, settings, running_run.experiment_id)
    assert other.id is not None
    run_service.claim_run(session, publisher_for(""), other.id, "worker-2")
    report_rounds(settings, running_run.id, 2, tmp_path / "a")
    report_rounds(settings, other.id, 1, tmp_path / "b")
    page = html(browser(secrets.viewer).get(f"/runs/compare?run={running_run.id}&run={other.id}"))
    series = json.loads(page.find(id="compare-data").text)
    assert [len(s["rounds"]) for s in series] == [2, 1]
    assert page.select_one("[data-compare-charts]") is not None
    single = html(browser(secrets.viewer).get(f"/runs/compare?run={other.id}"))
    assert single.select_one("[data-compare-charts]") is None


def test_runs_list_filters_by_status(
    browser: Callable[..., Browser], secrets: Secrets, running_run: Run
) -> None:
    b = browser(secrets.viewer)
    assert f"run {running_run.id}" in b.get("/runs?status=running").text
    assert f"run {running_run.id}" not in b.get("/runs?status=queued").text
    assert b.get("/runs?status=bogus").status_code == 422


def _claimed(session: Session, settings: Settings, **changes: object) -> Run:
    experiment = make_experiment(session, simulation_body(num_rounds=2, **changes))
    assert experiment.id is not None
    run = launch(session, settings, experiment.id)
    assert run.id is not None
    assert run_service.claim_run(session, publisher_for(""), run.id, "worker-1")
    session.refresh(run)
    return run


def test_run_page_shows_server_and_federated_evaluation_apart(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, settings: Settings
) -> None:
    """By default a run is evaluated on the server's held-out episode and at each client on its
    own: the page names both, and shows each in its own columns and chart line."""
    run = _claimed(session, settings)
    assert run.id is not None
    reporter = DbReporter(settings.database_url, "", run.id)
    try:
        clients = [
            ClientReport(client="client-0", site_id=None, ok=True, train_loss=0.9, samples=8,
                         eval_loss=0.61, eval_action_mse=12.5, eval_samples=4),
            ClientReport(client="client-1", site_id=None, ok=True, train_loss=0.8, samples=8),
        ]  # fmt: skip
        reporter.round_finished(
            RoundReport(round=1, train_loss=0.85, eval_loss=0.7, eval_action_mse=20.25,
                        fed_eval_loss=0.61, fed_eval_action_mse=12.5, fed_eval_samples=4,
                        duration_s=1.0, bytes_sent=0, bytes_received=0, clients_sampled=2,
                        clients_succeeded=2, clients_failed=0, clients=clients)
        )  # fmt: skip
    finally:
        reporter.close()
    soup = html(browser(secrets.viewer).get(f"/runs/{run.id}"))

    summary = soup.find(id="run-evaluation").text
    assert "on the server's held-out data" in summary and "own held-out episodes" in summary
    assert "Best checkpoint by server eval loss" in summary
    heads = [th.text for th in soup.select("#rounds-table thead th")]
    assert "Server eval loss" in heads and "Federated eval loss" in heads
    row = dict(zip(heads, [td.text for td in soup.select("#rounds-table tbody td")], strict=True))
    assert row["Server eval loss"] == "0.7000" and row["Server action MSE"] == "20.2500"
    assert row["Federated eval loss"] == "0.6100" and row["Federated action MSE"] == "12.5000"
    client_rows = [
        [td.text for td in tr.select("td")] for tr in soup.select("#clients-table tbody tr")
    ]
    assert "0.6100" in client_rows[0] and "none held out" in client_rows[1]
    data = json.loads(soup.find(id="run-chart-data").text)
    assert [s["key"] for s in data["loss_series"]] == ["eval_loss", "fed_eval_loss", "train_loss"]
    assert data["rounds"][0]["fed_eval_loss"] == 0.61


def test_evaluation_off_is_said_on_the_run_and_compare_pages_and_in_the_api(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, settings: Settings
) -> None:
    runs = [_claimed(session, settings, eval_every=0) for _ in range(2)]
    for run in runs:
        assert run.id is not None
        reporter = DbReporter(settings.database_url, "", run.id)
        try:
            reporter.round_finished(
                RoundReport(round=1, train_loss=0.5, eval_loss=None, duration_s=1.0,
                            bytes_sent=0, bytes_received=0, clients_sampled=2,
                            clients_succeeded=2, clients_failed=0)
            )  # fmt: skip
        finally:
            reporter.close()
    b = browser(secrets.viewer)
    soup = html(b.get(f"/runs/{runs[0].id}"))

    assert "Evaluation is off (eval_every is 0)" in soup.find(id="run-evaluation").text
    heads = [th.text for th in soup.select("#rounds-table thead th")]
    assert not [h for h in heads if "eval" in h.lower()], heads
    assert "the checkpoints kept are the last ones" in soup.find(id="run-tables").text
    data = json.loads(soup.find(id="run-chart-data").text)
    assert [s["key"] for s in data["loss_series"]] == ["train_loss"]

    compare = html(b.get(f"/runs/compare?run={runs[0].id}&run={runs[1].id}"))
    assert [f["data-chart"] for f in compare.select("[data-chart]")] == ["train_loss"]
    assert "Evaluation is off in every compared run" in compare.find(id="compare-no-eval").text
    assert "not evaluated" in compare.find(id="compare-table").text

    api = b.get(f"/api/v1/runs/{runs[0].id}").json()["evaluation"]
    assert api["enabled"] is False and api["best_checkpoint_by"] == "last round"
    experiment = b.get(f"/api/v1/experiments/{runs[0].experiment_id}").json()["evaluation"]
    assert experiment["enabled"] is False and "Evaluation is off" in experiment["summary"]
