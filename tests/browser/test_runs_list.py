"""The runs list, notes, settings diff and exports in headless Chromium, with htmx doing the
swaps: sort by clicking headers, search as one types, notes as an operator (a viewer is refused),
the compare page's differences, and a CSV download.

The runs are written by the services and the worker's reporter (no federation runs here), into
a real server on a migrated SQLite database.
"""

import csv
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Role, Run
from fedvla.core.services import runs as run_service
from tests.browser.conftest import screenshot
from tests.factories import (
    deployment_body,
    launch_quietly,
    make_experiment,
    make_site,
    make_token,
    run_rounds,
    simulation_body,
)
from tests.orchestration.conftest import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@dataclass
class Lab:
    url: str
    admin: str
    viewer: str
    operator: str
    alpha: int
    """A run of alpha-pick: eval loss 0.5, 30 s."""
    beta: int
    """A run of beta-place: train loss only, 0.2, 90 s."""
    site_run: int
    """A queued run of a deployment experiment the operator's site takes part in."""
    settings: Settings


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("runs-list")
    database = root / "fedvla.db"
    shutil.copy(sqlite_template, database)
    settings = Settings(
        environment="test",
        data_dir=root / "data",
        database_url=f"sqlite:///{database}",
        broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
        redis_url="",
    )
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        site = make_site(session)
        assert site.id is not None
        alpha = make_experiment(session, simulation_body(name="alpha-pick", num_rounds=2))
        beta = make_experiment(session, simulation_body(name="beta-place", num_rounds=3))
        deployed = make_experiment(session, deployment_body([site.id]))
        assert alpha.id is not None and beta.id is not None and deployed.id is not None
        a = launch_quietly(session, settings, alpha.id)
        b = launch_quietly(session, settings, beta.id)
        run_rounds(session, settings, a, [(0.9, 1.0), (0.5, 0.7)], seconds=30)
        run_rounds(session, settings, b, [(None, 0.4), (None, 0.3), (None, 0.2)], seconds=90)
        own = launch_quietly(session, settings, deployed.id)
        assert a.id is not None and b.id is not None and own.id is not None
        ids = (a.id, b.id, own.id)
        secrets = {role: make_token(session, role, site.id if role == Role.operator else None)
                   for role in Role}  # fmt: skip
    try:
        with LiveServer(settings) as server:
            yield Lab(
                server.url, secrets[Role.admin], secrets[Role.viewer], secrets[Role.operator],
                *ids, settings,
            )  # fmt: skip
    finally:
        engine.dispose()


@pytest.fixture
def open_page(chromium: Any, lab: Lab) -> Iterator[Callable[[str], Page]]:
    """open_page(secret) -> a signed-in page in a fresh browser context."""
    contexts = []

    def make(secret: str) -> Page:
        context = chromium.new_context(
            base_url=lab.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page: Page = context.new_page()
        page.goto("/signin")
        page.get_by_label("API token").fill(secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Signed in as")).to_be_visible()
        return page

    yield make
    for context in contexts:
        context.close()


def shown_runs(page: Page) -> list[int]:
    ids = page.locator("#runs-list tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
    return [int(value) for value in ids if int(value) in RUN_IDS]


RUN_IDS: set[int] = set()


def test_sort_by_clicking_the_headers(open_page: Callable[[str], Page], lab: Lab) -> None:
    RUN_IDS.update({lab.alpha, lab.beta})
    page = open_page(lab.viewer)
    page.goto("/runs")
    loss_header = page.locator("th", has=page.locator("a[data-sort=final_loss]"))
    assert "eval loss" in (loss_header.get_attribute("title") or "")

    page.locator("a[data-sort=final_loss]").click()
    expect(page).to_have_url(re.compile(r"/runs\?sort=final_loss&order=asc$"))
    expect(loss_header).to_have_attribute("aria-sort", "ascending")
    assert shown_runs(page) == [lab.beta, lab.alpha]
    expect(page.locator(f"tr[data-run-id='{lab.beta}']")).to_contain_text("(train)")

    page.locator("a[data-sort=final_loss]").click()
    expect(page).to_have_url(re.compile(r"/runs\?sort=final_loss$"))  # desc: the default
    expect(loss_header).to_have_attribute("aria-sort", "descending")
    assert shown_runs(page) == [lab.alpha, lab.beta]

    page.locator("a[data-sort=duration]").click()  # the longest first
    expect(page).to_have_url(re.compile(r"sort=duration"))
    expect(page.locator("#runs-list tbody tr").first).to_have_attribute(
        "data-run-id", str(lab.beta)
    )
    expect(page.locator(f"tr[data-run-id='{lab.beta}']")).to_contain_text("1 min 30 s")
    screenshot(page, "runs-list")


def test_search_as_one_types_keeping_the_sort(open_page: Callable[[str], Page], lab: Lab) -> None:
    page = open_page(lab.viewer)
    page.goto("/runs?sort=duration&order=asc")

    page.get_by_label("Search").press_sequentially("alpha", delay=30)

    expect(page).to_have_url(re.compile(r"q=alpha"))
    expect(page).to_have_url(re.compile(r"sort=duration&order=asc"))
    expect(page.locator("#runs-list tbody tr")).to_have_count(1)
    expect(page.locator("#runs-list tbody tr")).to_have_attribute("data-run-id", str(lab.alpha))
    page.get_by_label("Status").select_option("failed")
    expect(page.get_by_text("No runs match")).to_be_visible()
    expect(page).to_have_url(re.compile(r"status=failed"))
    page.go_back()
    expect(page.get_by_label("Status")).to_have_value("")


def test_operator_writes_notes_and_a_viewer_cannot(
    open_page: Callable[[str], Page], lab: Lab
) -> None:
    operator = open_page(lab.operator)
    operator.goto(f"/runs/{lab.site_run}")
    operator.get_by_label(f"Notes on run {lab.site_run}").fill("top camera moved 2 cm")
    operator.get_by_role("button", name="Save notes").click()
    expect(operator.get_by_label(f"Notes on run {lab.site_run}")).to_have_value(
        "top camera moved 2 cm"
    )
    operator.reload()
    expect(operator.get_by_label(f"Notes on run {lab.site_run}")).to_have_value(
        "top camera moved 2 cm"
    )
    operator.goto("/runs?q=camera")
    expect(operator.locator("#runs-list tbody tr")).to_have_attribute(
        "data-run-id", str(lab.site_run)
    )

    viewer = open_page(lab.viewer)
    viewer.goto(f"/runs/{lab.site_run}")
    expect(viewer.locator("#run-notes")).to_contain_text("top camera moved 2 cm")
    expect(viewer.get_by_role("button", name="Save notes")).to_have_count(0)
    csrf = viewer.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = viewer.request.post(
        f"/runs/{lab.site_run}/notes", form={"notes": "viewer was here", "csrf_token": csrf or ""}
    )
    assert refused.status == 403
    engine = make_engine(lab.settings.database_url)
    with Session(engine) as session:
        run = session.get(Run, lab.site_run)
        assert run is not None and run.notes == "top camera moved 2 cm"
    engine.dispose()


def test_compare_highlights_differing_settings(open_page: Callable[[str], Page], lab: Lab) -> None:
    page = open_page(lab.viewer)
    page.goto("/runs")
    page.get_by_label(f"Compare run {lab.alpha}").check()
    page.get_by_label(f"Compare run {lab.beta}").check()
    page.get_by_role("button", name="Compare selected runs").click()
    expect(page).to_have_url(re.compile(r"/runs/compare\?run=\d+&run=\d+$"))

    differing = page.locator("#settings-table tr[data-setting=num_rounds]")
    same = page.locator("#settings-table tr[data-setting=policy]")
    expect(differing).to_have_class(re.compile("differs"))
    expect(page.locator("#settings-table thead th")).to_have_text(
        ["Setting", f"run {lab.beta}", f"run {lab.alpha}"]  # the list's order: newest first
    )
    expect(differing.locator("td")).to_have_text(["3", "2"])
    highlighted = differing.locator("td").first.evaluate(
        "td => getComputedStyle(td).backgroundColor"
    )
    plain = same.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
    assert highlighted != plain
    every = page.locator("#settings-table tbody tr").count()

    page.get_by_label("Only settings that differ").check()
    expect(page).to_have_url(re.compile(r"only_differences=true"))
    expect(same).to_have_count(0)
    expect(differing).to_be_visible()
    assert page.locator("#settings-table tbody tr").count() < every
    screenshot(page, "compare-settings")


def test_export_the_rounds_as_csv(
    open_page: Callable[[str], Page], lab: Lab, tmp_path: Path
) -> None:
    page = open_page(lab.viewer)
    page.goto(f"/runs/{lab.alpha}")

    with page.expect_download() as download:
        page.get_by_label("Rounds as CSV").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)

    assert saved.name == f"run-{lab.alpha}-rounds.csv"
    rows = list(csv.DictReader(saved.open()))
    assert [(row["round"], row["eval_loss"]) for row in rows] == [("1", "0.9"), ("2", "0.5")]
    with Session(make_engine(lab.settings.database_url)) as session:
        assert len(run_service.round_metrics(session, lab.alpha)) == len(rows)
