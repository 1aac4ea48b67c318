"""Site pages (registration, approval queue, site page, contribution) and the workers page."""

from collections.abc import Callable

from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.models import ApiToken, Role, Site, SiteAudit, SiteStatus
from fedvla.core.security import hash_token
from fedvla.core.services import runs as run_service
from fedvla.core.services import sites as site_service
from fedvla.core.services import workers as worker_service
from fedvla.core.services.events import publisher_for
from fedvla.engine.federation.reporter import ClientReport, RoundReport
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.dispatch import run_sender
from tests.factories import (
    make_experiment,
    make_site,
    make_token,
    public_key_pem,
    simulation_body,
)
from tests.web.conftest import Browser, Secrets, html

SITE_FORM = {
    "name": "lab-b",
    "organisation": "Lab B",
    "contact": "ops@lab-b.example",
    "robot_type": "so101",
    "hardware": "RTX 4090",
    "dataset": "lab-b/so101_pick",
    "state_dim": "6",
    "action_dim": "6",
    "fps": "30",
    "episodes": "40",
    "frames": "12000",
    "camera_keys": "observation.images.top, observation.images.wrist",
    "camera_resolutions": "observation.images.top=640x480",
    "state_names": "",
    "action_names": "",
    "tasks": "pick the cube",
}


def test_register_with_errors_then_fixed(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)
    bad = b.post(
        "/sites",
        {**SITE_FORM, "state_dim": "0", "public_key": "not a key", "camera_resolutions": "top=big"},
    )
    assert bad.status_code == 422
    soup = html(bad)
    assert "camera=WIDTHxHEIGHT" in soup.find(id="f-camera_resolutions-error").text
    bad = b.post("/sites", {**SITE_FORM, "state_dim": "0", "public_key": "not a key"})
    soup = html(bad)
    assert soup.find(id="f-state_dim-error") is not None
    assert "PEM" in soup.find(id="f-public_key-error").text
    assert soup.find(id="f-public_key").text == "not a key"
    good = b.post("/sites", {**SITE_FORM, "public_key": public_key_pem()})
    assert good.status_code == 303
    page = html(b.get(good.headers["location"]))
    assert "pending" in page.find("h1").text
    assert "observation.images.top" in page.find(id="site-features").text
    assert "640\u00d7480" in page.find(id="site-features").text
    stored = session.exec(select(Site).where(Site.name == "lab-b")).one()
    assert stored.features["camera_resolutions"] == {"observation.images.top": [480, 640]}


def test_approval_queue_approve_and_revoke_with_reason(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    site = make_site(session)
    b = browser(secrets.admin)
    queue = html(b.get("/sites"))
    assert queue.find(id=f"pending-{site.id}") is not None
    response = b.post(f"/sites/{site.id}/approve", {"reason": "key checked", "next": "/sites"})
    assert response.status_code == 303 and response.headers["location"] == "/sites"
    session.refresh(site)
    assert site.status == SiteStatus.approved
    assert html(b.get("/sites")).find(id=f"pending-{site.id}") is None
    b.post(f"/sites/{site.id}/revoke", {"reason": "lost laptop"})
    session.refresh(site)
    assert site.status == SiteStatus.revoked and site.status_reason == "lost laptop"
    audit = session.exec(select(SiteAudit).where(SiteAudit.site_id == site.id)).all()
    assert [(a.action, a.reason) for a in audit][-2:] == [
        ("approve", "key checked"),
        ("revoke", "lost laptop"),
    ]
    page = html(b.get(f"/sites/{site.id}"))
    assert "lost laptop" in page.find(id="audit-table").text


def test_viewer_and_operator_cannot_decide(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    site = make_site(session)
    for secret in (secrets.viewer, secrets.operator):
        b = browser(secret)
        assert html(b.get("/sites")).find("button", string=f"Approve {site.name}") is None
        assert b.post(f"/sites/{site.id}/approve", {"reason": "x"}).status_code == 403
        assert b.post("/sites", SITE_FORM).status_code == 403
    session.refresh(site)
    assert site.status == SiteStatus.pending


def test_operator_registers_its_site_with_an_enrolment_token(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    enrolment = make_token(session, Role.operator)
    b = browser(enrolment)
    sites_page = html(b.get("/sites"))
    assert sites_page.find("a", string="Register a site") is not None
    assert sites_page.find(id="enrolment-hint") is not None
    assert b.get(f"/sites/{secrets.operator_site_id}").status_code == 403
    assert b.get("/sites/new").status_code == 200

    bad = b.post("/sites", {**SITE_FORM, "public_key": "not a key"})
    good = b.post("/sites", {**SITE_FORM, "public_key": public_key_pem()})

    assert bad.status_code == 422
    assert good.status_code == 303
    site = session.exec(select(Site).where(Site.name == "lab-b")).one()
    assert good.headers["location"] == f"/sites/{site.id}"
    assert "pending" in html(b.get(f"/sites/{site.id}")).find("h1").text
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(enrolment))).one()
    assert token.site_id == site.id
    after = html(b.get("/sites"))
    assert after.find("a", string="Register a site") is None
    assert after.find(id="enrolment-hint") is None
    assert b.get("/sites/new").status_code == 403
    assert b.post("/sites", {**SITE_FORM, "name": "lab-b2"}).status_code == 403

    admin = browser(secrets.admin)
    assert html(admin.get("/sites")).find(id=f"pending-{site.id}") is not None
    admin.post(f"/sites/{site.id}/approve", {"reason": "key checked"})
    session.refresh(site)
    assert site.status == SiteStatus.approved


def test_operator_edits_its_own_site_only(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    other = make_site(session)
    b = browser(secrets.operator)
    own_page = html(b.get(f"/sites/{secrets.operator_site_id}"))
    assert own_page.find("a", string="Edit") is not None
    form = b.get(f"/sites/{secrets.operator_site_id}/edit")
    values = {
        tag["name"]: (tag.text if tag.name == "textarea" else tag.get("value", ""))
        for tag in html(form).select("form.stacked input, form.stacked textarea")
        if tag.get("name") and tag["name"] != "csrf_token"
    }
    values["robot_type"] = "so101"
    response = b.post(f"/sites/{secrets.operator_site_id}/edit", {**values, "hardware": "2x 4090"})
    assert response.status_code == 303
    assert "2x 4090" in b.get(f"/sites/{secrets.operator_site_id}").text
    assert b.get(f"/sites/{other.id}").status_code == 403
    assert b.post(f"/sites/{other.id}/edit", values).status_code == 403


def test_site_contribution_across_runs(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, settings: Settings
) -> None:
    site = make_site(session)
    experiment = make_experiment(session, simulation_body())
    assert experiment.id is not None and site.id is not None
    run = run_service.launch_run(
        session, run_sender(settings), publisher_for(""), experiment_id=experiment.id, actor="tests"
    )
    assert run.id is not None
    reporter = DbReporter(settings.database_url, "", run.id)
    for number in (1, 2):
        clients = [
            ClientReport(client=site.name, site_id=site.id, ok=True, train_loss=0.5, samples=10,
                         episodes=1, seconds=2.0, bytes_sent=100, bytes_received=200)
        ]  # fmt: skip
        reporter.round_finished(
            RoundReport(round=number, train_loss=0.5, eval_loss=None, duration_s=2.0,
                        bytes_sent=100, bytes_received=200, clients_sampled=1,
                        clients_succeeded=1, clients_failed=0, clients=clients)
        )  # fmt: skip
    reporter.close()
    row = html(browser(secrets.viewer).get(f"/sites/{site.id}")).select_one(
        "#contributions-table tbody tr"
    )
    cells = [td.text for td in row.find_all("td")]
    assert cells[:4] == [f"run {run.id}", "2", "20", "2"]
    assert cells[4] == "4.0 s"


def test_workers_page_lists_workers_and_the_queue(
    browser: Callable[..., Browser], secrets: Secrets, session: Session, settings: Settings
) -> None:
    worker_service.register(session, name="gpu-box-1", host="gpu-box", queue="gpu", gpus=[])
    experiment = make_experiment(session, simulation_body())
    assert experiment.id is not None
    run = run_service.launch_run(
        session, run_sender(settings), publisher_for(""), experiment_id=experiment.id, actor="tests"
    )
    page = browser(secrets.viewer).get("/workers")
    soup = html(page)
    row = soup.select_one("#workers-table tbody tr")
    assert "gpu-box-1" in row.text and "online" in row.text and "CPU" in row.text
    assert f"run {run.id}" in soup.find(id="queue").text
    api = browser(secrets.viewer).get("/api/v1/workers").json()
    assert [w["name"] for w in api["data"]] == ["gpu-box-1"]
    assert page.headers["link"].startswith("</api/v1/workers>")


def test_site_page_shows_compatibility_and_node_status(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    site = make_site(
        session,
        features={"state_dim": 6, "action_dim": 6, "fps": 30, "camera_keys": ["top"],
                  "state_names": ["shoulder", "elbow"]},
    )  # fmt: skip
    b = browser(secrets.viewer)
    api = b.get(f"/api/v1/sites/{site.id}/compatibility").json()
    table = html(b.get(f"/sites/{site.id}")).find(id="compatibility-table")
    rows = table.select("tbody tr")
    assert len(rows) == len(api)
    assert any(report["mismatches"] for report in api)  # 2 state names for 6 dims
    for row, report in zip(rows, api, strict=True):
        for mismatch in report["mismatches"]:
            assert mismatch["reason"] in row.text
    node = b.get(f"/sites/{site.id}/node", headers={"HX-Request": "true"})
    assert node.status_code == 200
    assert html(node).find(id="site-node").text.strip().startswith("Node")
    assert "startup kit" not in b.get(f"/sites/{site.id}").text  # not approved, not its operator


def test_an_approved_site_page_says_why_no_kit_can_be_made(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    """These tests' server sets no public SuperLink address and its front binds loopback: a kit
    would dial this machine. The page says so and offers no download that would fail."""
    site = site_service.set_status(
        session=session, site=make_site(session), status=SiteStatus.approved, actor="t", reason=""
    )
    page = html(browser(secrets.admin).get(f"/sites/{site.id}"))

    problem = page.find(id="kit-unavailable")
    assert problem is not None
    assert "set FEDVLA_SUPERLINK_PUBLIC_ADDRESS" in problem.text
    assert page.find("a", string="Download the startup kit") is None
