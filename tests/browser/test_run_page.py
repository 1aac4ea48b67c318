"""The run page in headless Chromium, on a real run: values on hover and by keyboard, log scale,
smoothing, the choice of series (kept per browser), the live connection's "reconnecting" state
when the server's stream is cut, the ticking clock, confirmation before cancel, the worker's
resource chart, and the checkpoint links on a phone.

The tests share one system and its runs (module-scoped fixtures, made by whichever test
needs them first).
"""

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlmodel import Session

from fedvla.core.models import RunStatus
from fedvla.core.services import runs as run_service
from tests.browser.conftest import System
from tests.browser.test_dashboard import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

RUN_TIMEOUT_MS = 300_000


class CuttableProxy:
    """A TCP proxy in front of the web server whose connections the test can cut: ``cut(s)``
    closes every open connection (the browser's event stream among them) and refuses new ones
    for ``s`` seconds, as a network outage or a restarting server would."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.refuse_until = 0.0
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, seconds: float) -> None:
        with self.lock:
            self.refuse_until = time.monotonic() + seconds
            for sock in self.open:
                with _quiet():
                    sock.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def close(self) -> None:
        self.stopped = True
        self.cut(0)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except OSError:
            return
        finally:
            with self.lock:
                self.open.discard(a)
                self.open.discard(b)
            a.close()
            b.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def runs(system: System) -> dict[str, int]:
    """A long run, and one that waits behind it (one worker): launched once per system, so
    each test finds them whichever worker process runs it."""
    return {
        "long": launch(system, "long-run", rounds=60),
        "queued": launch(system, "waits-its-turn", rounds=2),
    }


@pytest.fixture(scope="module")
def proxy(system: System) -> Iterator[CuttableProxy]:
    server = CuttableProxy(system.url)
    yield server
    server.close()


def api(system: System) -> httpx.Client:
    return httpx.Client(
        base_url=system.url + "/api/v1",
        headers={"Authorization": f"Bearer {system.admin}"},
        timeout=30,
    )


def launch(system: System, name: str, rounds: int) -> int:
    body = {
        "name": name,
        "policy": "tiny",
        "num_rounds": rounds,
        "min_clients": 2,
        "local_steps": 2,
        "batch_size": 2,
        "eval_batches": 1,
        "device": "cpu",
        "client_num_cpus": 1.0,
        "partition": {
            "dataset": {"repo_id": "synthetic/so100", "root": str(system.dataset_root)},
            "num_clients": 2,
            "holdout_episodes": 1,
        },
    }
    with api(system) as client:
        created = client.post("/experiments", json=body)
        assert created.status_code == 201, created.text
        run = client.post(f"/experiments/{created.json()['id']}/runs")
        assert run.status_code == 202, run.text
        return int(run.json()["id"])


def status_of(system: System, run_id: int) -> RunStatus:
    with Session(system.engine) as session:
        return run_service.run_status(session, run_id)


def points(page: Page, chart: str) -> int:
    return int(page.locator(f'[data-chart="{chart}"]').get_attribute("data-points") or 0)


def wait_for_points(page: Page, chart: str, at_least: int) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-chart={chart}]').dataset.points) >= "
        f"{at_least}",
        timeout=RUN_TIMEOUT_MS,
    )


def series_labels(page: Page, chart: str) -> list[str]:
    labels: list[str] = page.evaluate(
        f"() => document.querySelector('[data-chart={chart}]')._plot.series.map(s => s.label)"
    )
    return labels


def series_data(page: Page, chart: str, label: str) -> list[float | None]:
    index = series_labels(page, chart).index(label)
    values: list[float | None] = page.evaluate(
        f"() => document.querySelector('[data-chart={chart}]')._plot.data[{index}]"
    )
    return values


def clock_changes(page: Page) -> None:
    """The run's clock shows another time within a few seconds, with no event in between."""
    before = page.locator("#run-clock").inner_text()
    page.wait_for_function(
        "before => document.querySelector('#run-clock').textContent !== before",
        arg=before,
        timeout=5_000,
    )


def test_the_clock_ticks_while_queued_and_while_running(
    new_page: Callable[..., Any], system: System, runs: dict[str, int]
) -> None:
    page: Page = new_page()
    sign_in(page, system.admin)

    page.goto(f"/runs/{runs['long']}")
    expect(page.locator("#run-status .badge")).to_have_text("running", timeout=RUN_TIMEOUT_MS)
    clock_changes(page)
    clock_changes(page)

    page.goto(f"/runs/{runs['queued']}")
    assert status_of(system, runs["queued"]) == RunStatus.queued
    expect(page.locator("#run-status")).to_contain_text("Waiting for a worker for")
    clock_changes(page)


def test_cancel_asks_first_and_does_nothing_when_declined(
    new_page: Callable[..., Any], system: System, runs: dict[str, int]
) -> None:
    page: Page = new_page()
    sign_in(page, system.admin)
    run_id = runs["queued"]
    page.goto(f"/runs/{run_id}")
    asked: list[str] = []

    def decline(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", decline)
    page.get_by_role("button", name="Cancel run").click()
    expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
    assert asked and asked[0].startswith(f"Cancel run {run_id}?")
    page.wait_for_timeout(1000)  # a cancel that went through anyway would show by now
    assert status_of(system, run_id) == RunStatus.queued

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-status .badge")).to_have_text("cancelled")
    assert status_of(system, run_id) == RunStatus.cancelled


def test_hover_log_scale_smoothing_and_series_choice(
    new_page: Callable[..., Any], system: System, runs: dict[str, int]
) -> None:
    page: Page = new_page()
    sign_in(page, system.admin)
    page.goto(f"/runs/{runs['long']}")
    wait_for_points(page, "loss", 3)

    def train_losses() -> dict[int, float]:
        with api(system) as client:
            rounds = client.get(f"/runs/{runs['long']}/rounds").json()["data"]
        return {r["round"]: r["train_loss"] for r in rounds if r["round"] > 0}

    # Hover: the legend shows the round under the cursor and its values.
    figure = page.locator('[data-chart="loss"]')
    over = figure.locator(".u-over")
    over.scroll_into_view_if_needed()  # the notes and downloads above push the charts down
    box = over.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    legend = figure.locator(".u-legend")
    expect(legend.locator(".u-series").first.locator(".u-value")).to_have_text(re.compile(r"^\d+$"))
    shown_round = int(legend.locator(".u-series").first.locator(".u-value").inner_text())
    train_row = legend.locator(".u-series", has_text="mean client train loss")
    shown_loss = float(train_row.locator(".u-value").inner_text())
    train = train_losses()
    assert shown_round in train
    assert shown_loss == pytest.approx(train[shown_round], rel=1e-3)

    # By keyboard: Home moves the cursor to the first round.
    figure.locator(".plot").focus()
    page.keyboard.press("Home")
    assert legend.locator(".u-series").first.locator(".u-value").inner_text() == "1"
    assert float(train_row.locator(".u-value").inner_text()) == pytest.approx(train[1], rel=1e-3)

    # Log scale: the same value sits elsewhere on the axis; the choice outlives a reload.
    probe = sorted(v for v in train.values() if v)[len(train) // 2]
    where = f"() => document.querySelector('[data-chart=loss]')._plot.valToPos({probe}, 'y')"
    linear = page.evaluate(where)
    figure.get_by_label("Log scale").check()
    expect(figure).to_have_attribute("data-scale", "log")
    assert (
        page.evaluate("() => document.querySelector('[data-chart=loss]')._plot.scales.y.distr") == 3
    )
    assert page.evaluate(where) != pytest.approx(linear, abs=0.5)
    page.reload()
    expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-scale", "log")
    expect(page.locator('[data-chart="loss"]').get_by_label("Log scale")).to_be_checked()
    page.locator('[data-chart="loss"]').get_by_label("Log scale").uncheck()

    # Smoothing, by keyboard: the line drawn is the moving average, the raw values stay (faint).
    raw_before = series_data(page, "loss", "mean client train loss")
    page.locator("#chart-smoothing").focus()
    page.keyboard.press("End")
    expect(page.locator("#chart-smoothing-value")).to_have_text("0.99")
    smoothed = series_data(page, "loss", "mean client train loss")
    raw = series_data(page, "loss", "mean client train loss (raw)")
    assert raw[: len(raw_before)] == raw_before
    assert smoothed[0] == pytest.approx(raw[0])
    assert any(s != pytest.approx(r) for s, r in zip(smoothed[1:], raw[1:], strict=True))
    values = [v for v in raw if v is not None]
    assert all(min(values) - 1e-9 <= s <= max(values) + 1e-9 for s in smoothed if s is not None)
    page.keyboard.press("Home")
    expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-smoothing", "0")

    # Choice of series: unticked, it is no longer drawn, and stays so after a reload.
    page.locator('[data-chart="loss"]').get_by_label("server eval loss").uncheck()
    assert "server eval loss" not in series_labels(page, "loss")
    assert "mean client train loss" in series_labels(page, "loss")
    page.reload()
    wait_for_points(page, "loss", 1)
    assert "server eval loss" not in series_labels(page, "loss")
    page.locator('[data-chart="loss"]').get_by_label("server eval loss").check()
    assert "server eval loss" in series_labels(page, "loss")


def test_reconnecting_shows_while_the_stream_is_cut_and_goes_after(
    chromium: Any, system: System, proxy: CuttableProxy, runs: dict[str, int]
) -> None:
    context = chromium.new_context(base_url=proxy.url, viewport={"width": 1280, "height": 900})
    try:
        page: Page = context.new_page()
        sign_in(page, system.admin)
        page.goto(f"/runs/{runs['long']}")
        stream = page.locator("#run-stream")
        expect(stream).to_have_attribute("data-connection", "open")
        notice = page.locator("#run-connection")
        expect(notice).to_be_hidden()
        wait_for_points(page, "loss", 1)
        before = points(page, "loss")

        proxy.cut(6)

        expect(notice).to_be_visible(timeout=5_000)
        expect(notice).to_contain_text("reconnecting")
        expect(stream).to_have_attribute("data-connection", "reconnecting")
        expect(notice).to_be_hidden(timeout=60_000)
        expect(stream).to_have_attribute("data-connection", "open")
        wait_for_points(page, "loss", before + 1)  # the stream goes on after the cut
    finally:
        context.close()


def test_the_workers_memory_is_sampled_and_drawn(
    new_page: Callable[..., Any], system: System, runs: dict[str, int]
) -> None:
    page: Page = new_page()
    sign_in(page, system.viewer)
    page.goto(f"/runs/{runs['long']}")
    wait_for_points(page, "memory", 1)
    count = points(page, "memory")
    assert count >= 1, "no resource sample on the page"
    wait_for_points(page, "memory", count + 1)  # live, over the event stream
    assert "memory" in series_labels(page, "memory")
    assert "CPU" in series_labels(page, "utilization")
    with api(system) as client:
        samples = client.get(f"/runs/{runs['long']}/resources").json()
    assert samples["count"] >= count
    assert all(s["memory_bytes"] > 0 for s in samples["data"])
    if all(s.get("gpu_memory_bytes") is None for s in samples["data"]):
        assert "GPU memory" not in series_labels(page, "memory")  # not shown as zero
    expect(page.locator("#run-log")).not_to_contain_text("resources:")


def test_checkpoint_links_are_on_screen_at_390_px(
    new_page: Callable[..., Any], system: System, runs: dict[str, int]
) -> None:
    with api(system) as client:
        deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
        while not client.get(f"/runs/{runs['long']}/checkpoints").json()["data"]:
            assert time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(1)
    phone: Page = new_page(width=390, height=844)
    sign_in(phone, system.viewer)
    phone.goto(f"/runs/{runs['long']}")
    expect(phone.locator("#checkpoints-table tbody tr").first).to_be_visible()
    links = phone.locator("#checkpoints-table a")
    assert links.count() >= 2
    for index in range(links.count()):
        link = links.nth(index)
        link.scroll_into_view_if_needed()
        box = link.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (link.inner_text(), box)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1

    with api(system) as client:
        assert client.post(f"/runs/{runs['long']}/cancel").status_code == 200
    expect(phone.locator("#run-status .badge")).to_have_text("cancelled", timeout=30_000)
    clock = phone.locator("#run-clock")
    assert clock.get_attribute("data-ticking") is None  # a finished run's clock stands still
