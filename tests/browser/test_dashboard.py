"""End to end in headless Chromium: what a coordinator and a robot operator do in the dashboard.

The tests share one running system (module-scoped) and build on each other in file order: the
run of the second test is what the third compares and what the viewer opens.
"""

import hashlib
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlmodel import Session

from fedvla.core.models import RunStatus
from fedvla.core.services import runs as run_service
from tests.browser.conftest import System, screenshot
from tests.factories import public_key_pem

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

RUN_TIMEOUT_MS = 240_000
RUNS: dict[str, int] = {}
"""Run ids by what a test did with them, for the tests after it."""


def sign_in(page: Page, secret: str) -> None:
    page.goto("/signin")
    page.get_by_label("API token").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in as")).to_be_visible()


def fill(page: Page, fields: dict[str, str]) -> None:
    for name, value in fields.items():
        target = page.locator(f"#f-{name}")
        if target.evaluate("e => e.tagName") == "SELECT":
            target.select_option(value)
        else:
            target.fill(value)


def tiny_experiment(system: System, name: str, rounds: str) -> dict[str, str]:
    return {
        "name": name,
        "description": "Two simulated SO-100 labs, tiny policy",
        "policy": "tiny",
        "num_rounds": rounds,
        "min_clients": "2",
        "local_steps": "2",
        "batch_size": "2",
        "eval_batches": "1",
        "device": "cpu",
        "partition_repo_id": "synthetic/so100",
        "partition_root": str(system.dataset_root),
        "partition_num_clients": "2",
        "partition_holdout_episodes": "1",
    }


def loss_points(page: Page) -> int:
    value = page.locator('[data-chart="loss"]').get_attribute("data-points")
    return int(value or 0)


def test_sign_in_create_with_an_error_then_fixed(
    new_page: Callable[..., Any], system: System
) -> None:
    page: Page = new_page()
    page.goto("/experiments")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fexperiments$"))
    screenshot(page, "signin")
    page.get_by_label("API token").fill("fvla_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#token-error")).to_contain_text("unknown or revoked")
    sign_in(page, system.admin)

    page.get_by_role("link", name="New experiment").click()
    fill(page, tiny_experiment(system, "pick-place-fedavg", rounds="0"))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#f-num_rounds-error")).to_contain_text("greater than or equal to 1")
    expect(page.locator("#f-partition_root")).to_have_value(str(system.dataset_root))
    expect(page.locator("#f-name")).to_have_value("pick-place-fedavg")
    screenshot(page, "experiment-form-error")

    page.locator("#f-num_rounds").fill("2")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="pick-place-fedavg")).to_be_visible()
    expect(page.get_by_text("Experiment 'pick-place-fedavg' created.")).to_be_visible()


def test_launch_watch_the_chart_grow_and_download_the_checkpoint(
    new_page: Callable[..., Any], system: System, tmp_path: Path
) -> None:
    page: Page = new_page()
    sign_in(page, system.admin)
    page.get_by_role("link", name="New experiment").click()
    fill(page, tiny_experiment(system, "watch-me", rounds="2"))
    page.get_by_role("button", name="Save").click()
    screenshot(page, "experiment")
    page.get_by_role("button", name="Launch run").click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_url = page.url
    run_id = int(run_url.rstrip("/").rsplit("/", 1)[1])
    page.evaluate("window.__notReloaded = true")

    start = loss_points(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-chart=loss]').dataset.points) > {start}",
        timeout=RUN_TIMEOUT_MS,
    )
    grown = loss_points(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-chart=loss]').dataset.points) > {grown}",
        timeout=RUN_TIMEOUT_MS,
    )
    expect(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
    assert page.url == run_url
    rounds = page.request.get(f"/api/v1/runs/{run_id}/rounds").json()["data"]
    trained = [r for r in rounds if r["round"] > 0]  # round 0: the evaluation before training
    assert loss_points(page) == len(trained) == 2
    expect(page.locator("#run-log")).to_contain_text("succeeded")
    expect(page.locator('label[for="run-progress"]')).to_contain_text("Round 2 of 2")
    screenshot(page, "run")

    row = page.locator("#checkpoints-table tbody tr").last
    expected = row.locator("code.sha256").inner_text()
    with page.expect_download() as download_info:
        row.get_by_role("link", name="model.safetensors").click()
    saved = tmp_path / "model.safetensors"
    download_info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == expected

    expect(page.get_by_role("button", name="Resume from round 2")).to_have_count(0)  # the last
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Resume from round 1").click()
    page.wait_for_url(lambda url: url != run_url and re.search(r"/runs/\d+$", url) is not None)
    resumed_id = int(page.url.rsplit("/", 1)[1])
    assert resumed_id != run_id
    expect(page.locator("#run-status")).to_contain_text("resumed from round 1")
    expect(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    resumed_rounds = page.request.get(f"/api/v1/runs/{resumed_id}/rounds").json()["data"]
    assert [r["round"] for r in resumed_rounds if r["train_loss"] is not None] == [2]
    expect(page.locator('label[for="run-progress"]')).to_contain_text("Round 2 of 2")
    assert page.locator("#run-progress").get_attribute("value") == "100"
    RUNS.update(first=run_id, resumed=resumed_id)

    phone: Page = new_page(width=390, height=844)
    sign_in(phone, system.viewer)
    phone.goto(run_url)
    expect(phone.locator("#run-status .badge")).to_have_text("succeeded")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    screenshot(phone, "run-phone")


def test_cancel_a_run(new_page: Callable[..., Any], system: System) -> None:
    page: Page = new_page()
    sign_in(page, system.admin)
    page.get_by_role("link", name="New experiment").click()
    fill(page, tiny_experiment(system, "cancel-me", rounds="50"))
    page.get_by_role("button", name="Save").click()
    page.get_by_role("button", name="Launch run").click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    expect(page.locator("#run-status .badge")).to_have_text(re.compile("queued|running"))
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel run").click()
    expect(page.get_by_text(f"Run {run_id} cancelled.")).to_be_visible()
    assert asked and asked[0].startswith(f"Cancel run {run_id}?")
    expect(page.locator("#run-status .badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    with Session(system.engine) as session:
        assert run_service.run_status(session, run_id) == RunStatus.cancelled

    page.get_by_role("link", name="Runs").first.click()
    page.wait_for_url(re.compile(r"/runs$"))
    for run in (RUNS["first"], RUNS["resumed"]):
        page.get_by_label(f"Compare run {run}").check()
    page.get_by_role("button", name="Compare selected runs").click()
    page.wait_for_url(re.compile(r"/runs/compare\?run=\d+&run=\d+$"))
    expect(page.locator("#compare-table tbody tr")).to_have_count(2)
    # rounds 1 and 2 (round 0, the evaluation before training, is not drawn)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-chart=eval_loss]').dataset.points) >= 2"
    )
    screenshot(page, "compare")
    page.get_by_role("link", name="Workers").click()
    page.wait_for_url(re.compile(r"/workers$"))
    expect(page.locator("#workers-table")).to_contain_text(system.worker.name)
    screenshot(page, "workers")


def test_viewer_sees_no_buttons(new_page: Callable[..., Any], system: System) -> None:
    page: Page = new_page()
    sign_in(page, system.viewer)
    screenshot(page, "experiments")
    expect(page.get_by_role("link", name="New experiment")).to_have_count(0)
    page.get_by_role("link", name="watch-me").click()
    page.wait_for_url(re.compile(r"/experiments/\d+$"))
    expect(page.get_by_role("heading", name="watch-me")).to_be_visible()
    expect(page.get_by_role("button", name="Launch run")).to_have_count(0)
    refused = page.request.post(page.url + "/launch", form={"csrf_token": "forged"})
    assert refused.status == 403


def test_operator_registers_a_site_with_an_enrolment_token_and_admin_approves_it(
    new_page: Callable[..., Any], system: System
) -> None:
    admin: Page = new_page()
    sign_in(admin, system.admin)
    admin.get_by_role("link", name="Tokens").click()
    admin.wait_for_url(re.compile(r"/tokens$"))
    fill(admin, {"name": "lab-b-operator", "role": "operator", "site_id": ""})
    admin.get_by_role("button", name="Create token").click()
    secret = admin.locator("#new-secret").input_value()
    assert secret.startswith("fvla_")
    screenshot(admin, "tokens", mask=[admin.locator("#new-secret")])

    operator: Page = new_page()
    sign_in(operator, secret)
    operator.get_by_role("link", name="Sites").click()
    expect(operator.locator("#enrolment-hint")).to_be_visible()
    operator.get_by_role("link", name="Register a site").click()
    fill(
        operator,
        {
            "name": "lab-b",
            "organisation": "Lab B Robotics",
            "contact": "ops@lab-b.example",
            "robot_type": "so101",
            "hardware": "RTX 4090, 64 GB",
            "dataset": "lab-b/so101_pick_cube",
            "state_dim": "6",
            "action_dim": "6",
            "fps": "30",
            "camera_keys": "observation.images.top, observation.images.wrist",
            "camera_resolutions": "observation.images.top=640x480",
            "public_key": "not a key",
        },
    )
    operator.get_by_role("button", name="Save").click()
    expect(operator.locator("#f-public_key-error")).to_contain_text("PEM")
    operator.locator("#f-public_key").fill(public_key_pem())
    operator.get_by_role("button", name="Save").click()
    operator.wait_for_url(re.compile(r"/sites/\d+$"))
    expect(operator.get_by_role("heading", name=re.compile("lab-b"))).to_contain_text("pending")
    expect(operator.get_by_role("button", name=re.compile("Approve"))).to_have_count(0)
    site_id = int(operator.url.rstrip("/").rsplit("/", 1)[1])
    operator.get_by_role("link", name="Sites").click()
    expect(operator.get_by_role("link", name="Register a site")).to_have_count(0)

    admin.get_by_role("link", name="Sites").click()
    pending = admin.locator(f"#pending-{site_id}")
    expect(pending).to_contain_text("lab-b")
    screenshot(admin, "sites-queue")
    pending.get_by_label("Reason").first.fill("Key checked on a call with Lab B")
    pending.get_by_role("button", name="Approve lab-b").click()
    expect(admin.get_by_text("Site 'lab-b' approved.")).to_be_visible()
    expect(admin.locator(f"#pending-{site_id}")).to_have_count(0)
    admin.get_by_role("link", name="lab-b").click()
    expect(admin.locator("#audit-table")).to_contain_text("Key checked on a call with Lab B")
    expect(admin.locator("#site-node")).to_contain_text("Node")
    screenshot(admin, "site")

    operator.goto(f"/sites/{site_id}")
    with operator.expect_download() as download_info:
        operator.get_by_role("link", name="Download the startup kit").click()
    kit = zipfile.ZipFile(download_info.value.path())
    assert "fedvla-site/README.md" in kit.namelist()
    assert not any(
        "PRIVATE KEY" in kit.read(name).decode(errors="ignore") for name in kit.namelist()
    )
