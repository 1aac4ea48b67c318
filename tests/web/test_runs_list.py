"""The runs list, notes, downloads and the settings diff in the dashboard, without JS (plain GET
and form posts) and as htmx asks for them."""

from collections.abc import Callable

import pytest
from httpx import Response
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import MAX_RUN_NOTES_LENGTH, Run
from fedvla.core.services import run_files
from fedvla.core.services.run_search import FINAL_LOSS_MEANING
from tests.factories import (
    deployment_body,
    launch_quietly,
    make_experiment,
    run_rounds,
    simulation_body,
)
from tests.web.conftest import Browser, Secrets, html

HTMX = {"HX-Request": "true"}


@pytest.fixture
def two_runs(session: Session, settings: Settings) -> tuple[Run, Run]:
    """cheap: 2 rounds, eval loss 0.3, 20 s; long: 3 rounds, train loss only (0.8), 200 s."""
    cheap = make_experiment(session, simulation_body(name="cheap-pick", num_rounds=2))
    long = make_experiment(session, simulation_body(name="long-place", num_rounds=3))
    assert cheap.id is not None and long.id is not None
    a = launch_quietly(session, settings, cheap.id)
    b = launch_quietly(session, settings, long.id)
    run_rounds(session, settings, a, [(0.6, 0.9), (0.3, 0.5)], seconds=20)
    run_rounds(session, settings, b, [(None, 1.0), (None, 0.9), (None, 0.8)], seconds=200)
    return a, b


def listed(response: Response) -> list[str]:
    """The run ids the list shows, in order."""
    return [str(row["data-run-id"]) for row in html(response).select("#runs-list tbody tr")]


def test_sorted_by_clicking_headers_without_js(
    browser: Callable[..., Browser], secrets: Secrets, two_runs: tuple[Run, Run]
) -> None:
    a, b = (str(run.id) for run in two_runs)
    viewer = browser(secrets.viewer)
    page = html(viewer.get("/runs"))
    header = page.find("a", attrs={"data-sort": "final_loss"})
    assert header is not None and header.parent["title"] == FINAL_LOSS_MEANING

    by_loss = viewer.get(str(header["href"]))
    again = html(by_loss).find("a", attrs={"data-sort": "final_loss"})
    by_loss_desc = viewer.get(str(again["href"]))

    assert listed(by_loss) == [a, b]
    assert html(by_loss).find("a", attrs={"data-sort": "final_loss"}).parent["aria-sort"] == (
        "ascending"
    )
    assert listed(by_loss_desc) == [b, a]
    cells = html(by_loss).select("#runs-list tbody tr")
    assert "0.3000" in cells[0].text and "0.8000" in cells[1].text and "(train)" in cells[1].text
    assert "20 s" in cells[0].text and "3 min 20 s" in cells[1].text
    assert listed(viewer.get("/runs?sort=duration&order=desc")) == [b, a]


def test_search_and_filters_as_a_plain_form_and_for_htmx(
    browser: Callable[..., Browser], secrets: Secrets, two_runs: tuple[Run, Run]
) -> None:
    a, b = two_runs
    viewer = browser(secrets.viewer)

    page = viewer.get("/runs?q=LONG&experiment_id=&status=&created_from=&created_to=")
    fragment = viewer.get("/runs?q=cheap&status=succeeded&experiment_id=", headers=HTMX)
    by_experiment = viewer.get(f"/runs?experiment_id={a.experiment_id}")

    assert listed(page) == [str(b.id)]
    assert html(page).find(id="runs-q")["value"] == "LONG"
    assert html(fragment).find(id="runs-filter") is None  # the table alone
    assert html(fragment).find(id="runs-table") is not None
    assert listed(fragment) == [str(a.id)]
    assert fragment.headers["HX-Push-Url"] == "/runs?q=cheap&status=succeeded"
    assert listed(by_experiment) == [str(a.id)]
    assert 'rel="alternate"' in by_experiment.headers["link"]
    assert "/api/v1/runs?experiment_id=" in by_experiment.headers["link"]
    assert "No runs match" in viewer.get("/runs?q=nothing-like-this").text
    refused = viewer.get("/runs?created_from=2026-02-02&created_to=2026-02-01")
    assert refused.status_code == 422 and "created_to" in refused.text


def test_pages_of_runs(
    browser: Callable[..., Browser], secrets: Secrets, two_runs: tuple[Run, Run]
) -> None:
    a, b = two_runs
    viewer = browser(secrets.viewer)

    first = html(viewer.get("/runs?limit=1"))
    following = first.find("a", attrs={"rel": "next"})
    second = viewer.get(str(following["href"]))

    assert [r["data-run-id"] for r in first.select("#runs-list tbody tr")] == [str(b.id)]
    assert listed(second) == [str(a.id)]
    assert html(second).find("a", attrs={"rel": "next"}) is None
    assert html(second).find("a", attrs={"rel": "prev"}) is not None


@pytest.fixture
def site_run(session: Session, settings: Settings, secrets: Secrets) -> Run:
    """A run of an experiment the operator's site takes part in."""
    experiment = make_experiment(session, deployment_body([secrets.operator_site_id]))
    assert experiment.id is not None
    return launch_quietly(session, settings, experiment.id)


def test_operator_edits_notes_with_a_form_and_with_htmx(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, site_run: Run
) -> None:
    operator = browser(secrets.operator)
    form = html(operator.get(f"/runs/{site_run.id}")).find(id="run-notes").find("form")
    assert form is not None and form["action"] == f"/runs/{site_run.id}/notes"

    saved = operator.post(f"/runs/{site_run.id}/notes", {"notes": "gripper camera loose"})
    fragment = operator.client.post(
        f"/runs/{site_run.id}/notes",
        data={"notes": "camera fixed", "csrf_token": operator.csrf()},
        headers=HTMX,
    )

    assert saved.status_code == 303
    assert fragment.status_code == 200
    assert html(fragment).find("textarea").text == "camera fixed"
    assert html(fragment).find("section")["id"] == "run-notes"
    session.refresh(site_run)
    assert site_run.notes == "camera fixed"
    assert "camera fixed" in operator.get("/runs?q=fixed").text


def test_viewers_read_notes_but_cannot_edit_them(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, site_run: Run
) -> None:
    browser(secrets.admin).post(f"/runs/{site_run.id}/notes", {"notes": "from the admin"})
    viewer = browser(secrets.viewer)
    section = html(viewer.get(f"/runs/{site_run.id}")).find(id="run-notes")

    refused = viewer.post(f"/runs/{site_run.id}/notes", {"notes": "mine now"})

    assert section.find("form") is None and "from the admin" in section.text
    assert refused.status_code == 403
    session.refresh(site_run)
    assert site_run.notes == "from the admin"


def test_notes_too_long_are_refused_naming_the_field(
    browser: Callable[..., Browser], secrets: Secrets, site_run: Run
) -> None:
    admin = browser(secrets.admin)

    refused = admin.post(f"/runs/{site_run.id}/notes", {"notes": "x" * (MAX_RUN_NOTES_LENGTH + 1)})

    assert refused.status_code == 422
    assert "notes" in html(refused).text


def test_run_page_links_its_exports_and_its_log(
    browser: Callable[..., Browser],
    secrets: Secrets,
    settings: Settings,
    two_runs: tuple[Run, Run],
) -> None:
    run = two_runs[0]
    log = run_files.log_path(settings, run.storage_key)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("federation started\n")
    viewer = browser(secrets.viewer)
    section = html(viewer.get(f"/runs/{run.id}")).find(id="run-downloads")
    links = {a["aria-label"]: a["href"] for a in section.find_all("a")}

    downloads = {label: viewer.get(href) for label, href in links.items()}

    assert set(links) == {
        "Rounds as CSV", "Rounds as JSON", "Clients per round as CSV",
        "Clients per round as JSON", "Run log (federation.log)",
    }  # fmt: skip
    assert all(response.status_code == 200 for response in downloads.values())
    assert downloads["Rounds as CSV"].text.splitlines()[0].startswith("round,eval_loss")
    assert len(downloads["Clients per round as JSON"].json()) == 4
    assert downloads["Run log (federation.log)"].text == "federation started\n"


def test_compare_shows_the_settings_side_by_side_with_differences_marked(
    browser: Callable[..., Browser], secrets: Secrets, two_runs: tuple[Run, Run]
) -> None:
    a, b = two_runs
    viewer = browser(secrets.viewer)
    url = f"/runs/compare?run={a.id}&run={b.id}"

    every = html(viewer.get(url))
    only = html(viewer.get(url + "&only_differences=true"))

    rows = {row["data-setting"]: row for row in every.select("#settings-table tbody tr")}
    assert "differs" in rows["num_rounds"]["class"]
    assert [td.text for td in rows["num_rounds"].find_all("td")] == ["2", "3"]
    assert [td.text for td in rows["experiment"].find_all("td")] == ["cheap-pick", "long-place"]
    assert "differs" not in (rows["policy"].get("class") or [])
    assert rows["partition.num_clients"].find_all("td")[0].text == "2"
    shown = {row["data-setting"] for row in only.select("#settings-table tbody tr")}
    assert "num_rounds" in shown and "policy" not in shown
    assert shown == {name for name, row in rows.items() if "differs" in (row.get("class") or [])}
    checkbox = only.find("input", attrs={"name": "only_differences"})
    assert checkbox.has_attr("checked")


def test_back_to_a_pushed_url_gets_the_whole_page(
    browser: Callable[..., Browser], secrets: Secrets, two_runs: tuple[Run, Run]
) -> None:
    viewer = browser(secrets.viewer)
    restore = {**HTMX, "HX-History-Restore-Request": "true"}

    swapped = html(viewer.get("/runs?sort=duration", headers=HTMX))
    restored = html(viewer.get("/runs?sort=duration", headers=restore))

    assert swapped.find(id="runs-filter") is None
    assert restored.find(id="runs-filter") is not None and restored.find(id="runs-table")
