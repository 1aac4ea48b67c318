"""The tokens page: admins hand out tokens (the secret shown once) and revoke them."""

from collections.abc import Callable

from sqlmodel import Session, select

from fedvla.core.models import ApiToken, Role
from tests.web.conftest import Browser, Secrets, html


def test_admin_creates_an_operator_token_that_signs_in(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)
    assert html(b.get("/experiments")).find("a", string="Tokens") is not None
    viewer_with_site = b.post(
        "/tokens", {"name": "lab-op", "role": "viewer", "site_id": str(secrets.operator_site_id)}
    )
    assert viewer_with_site.status_code == 422
    error = html(viewer_with_site).find(id="f-site_id-error")
    assert error is not None and "only operator tokens" in error.text
    assert html(viewer_with_site).find(id="f-name")["value"] == "lab-op"

    created = b.post(
        "/tokens", {"name": "lab-op", "role": "operator", "site_id": str(secrets.operator_site_id)}
    )
    assert created.status_code == 200
    secret = html(created).find(id="new-secret")["value"]
    assert secret.startswith("fvla_")
    assert secret not in created.headers.get("set-cookie", "")
    row = session.exec(select(ApiToken).where(ApiToken.name == "lab-op")).one()
    assert (row.role, row.site_id) == (Role.operator, secrets.operator_site_id)
    assert secret not in b.get("/tokens").text  # shown once

    operator = browser(secret)
    assert operator.get(f"/sites/{secrets.operator_site_id}").status_code == 200

    revoked = b.post(f"/tokens/{row.id}/revoke")
    assert revoked.status_code == 303
    assert operator.client.get("/experiments", follow_redirects=False).status_code == 303


def test_only_admins_reach_tokens(browser: Callable[..., Browser], secrets: Secrets) -> None:
    for secret in (secrets.viewer, secrets.operator):
        b = browser(secret)
        assert html(b.get("/experiments")).find("a", string="Tokens") is None
        assert b.get("/tokens").status_code == 403
        assert b.post("/tokens", {"name": "x", "role": "admin"}).status_code == 403


def test_admin_creates_an_enrolment_token_without_a_site(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)
    assert "may register one site" in html(b.get("/tokens")).find(id="f-site_id-hint").text

    created = b.post("/tokens", {"name": "lab-new", "role": "operator", "site_id": ""})

    assert created.status_code == 200
    secret = html(created).find(id="new-secret")["value"]
    row = session.exec(select(ApiToken).where(ApiToken.name == "lab-new")).one()
    assert (row.role, row.site_id) == (Role.operator, None)
    operator = browser(secret)
    assert html(operator.get("/sites")).find(id="enrolment-hint") is not None
