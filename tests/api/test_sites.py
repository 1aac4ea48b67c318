"""Sites through the REST API: registration, edits, approval with an audit trail."""

from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from fedvla.core.errors import Conflict, NotFound
from fedvla.core.models import ApiToken, Role, Site, SiteAudit
from fedvla.core.schemas.sites import SiteCreate, SiteUpdate
from fedvla.core.security import hash_token
from fedvla.core.services import sites as site_service
from fedvla.core.services.tokens import create_token
from tests.api.conftest import World
from tests.factories import bearer, public_key_pem, site_body

API = "/api/v1/sites"


def test_register_read_edit_delete(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    body = site_body(name="lab-c", robot_type="so101", hardware="RTX 4090")

    created = client.post(API, json=body, headers=admin)
    assert created.status_code == 201, created.text
    site = created.json()
    assert site.pop("compatibility")[0]["compatible"] is True  # tests/deployment checks more
    assert site["status"] == "pending"
    assert site["features"]["state_dim"] == 6
    assert site["public_key"].startswith("-----BEGIN PUBLIC KEY-----")

    assert client.get(f"{API}/{site['id']}", headers=admin).json() == site
    assert client.get(API, headers=admin).json()["count"] == 3

    patched = client.patch(
        f"{API}/{site['id']}",
        json={"features": {"state_dim": 7, "action_dim": 7, "fps": 15}},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["features"]["state_dim"] == 7
    assert patched.json()["name"] == "lab-c"

    assert client.delete(f"{API}/{site['id']}", headers=admin).status_code == 204
    assert client.get(f"{API}/{site['id']}", headers=admin).json() == {
        "detail": "Site not found",
        "errors": [],
    }


def test_operator_sees_and_edits_only_its_own_site(client: TestClient, world: World) -> None:
    operator = bearer(world.secrets["operator_own"] or "")

    listed = client.get(API, headers=operator).json()
    edited = client.patch(f"{API}/{world.own_site_id}", json={"contact": "me@x"}, headers=operator)
    foreign = client.patch(
        f"{API}/{world.other_site_id}", json={"contact": "me@x"}, headers=operator
    )
    status_change = client.patch(
        f"{API}/{world.own_site_id}", json={"status": "approved"}, headers=operator
    )

    assert [s["id"] for s in listed["data"]] == [world.own_site_id]
    assert listed["count"] == 1
    assert edited.status_code == 200
    assert edited.json()["contact"] == "me@x"
    assert foreign.status_code == 403
    assert status_change.status_code == 422
    assert status_change.json()["errors"][0]["field"] == "status"


def test_approve_and_revoke_are_audited(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")

    approved = client.post(
        f"{API}/{world.own_site_id}/approve", json={"reason": "checked on a call"}, headers=admin
    )
    again = client.post(f"{API}/{world.own_site_id}/approve", json={}, headers=admin)
    revoked = client.post(
        f"{API}/{world.own_site_id}/revoke", json={"reason": "key leaked"}, headers=admin
    )
    audit = client.get(f"{API}/{world.own_site_id}/audit", headers=admin).json()

    assert approved.json()["status"] == "approved"
    assert datetime.fromisoformat(approved.json()["approved_at"]).utcoffset() == timedelta(0)
    assert again.status_code == 409
    assert revoked.json()["status"] == "revoked"
    assert revoked.json()["status_reason"] == "key leaked"
    assert [(a["action"], a["reason"]) for a in audit] == [
        ("register", ""),
        ("approve", "checked on a call"),
        ("revoke", "key leaked"),
    ]
    assert {a["actor"] for a in audit[1:]} == {
        "admin-" + a["actor"].split("-")[-1] for a in audit[1:]
    }


def test_new_public_key_sends_an_approved_site_back_to_pending(
    client: TestClient, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    operator = bearer(world.secrets["operator_own"] or "")
    client.post(f"{API}/{world.own_site_id}/approve", json={}, headers=admin)

    response = client.patch(
        f"{API}/{world.own_site_id}", json={"public_key": public_key_pem()}, headers=operator
    )

    assert response.json()["status"] == "pending"
    audit = client.get(f"{API}/{world.own_site_id}/audit", headers=operator).json()
    assert audit[-1]["action"] == "rekey"


def test_public_key_must_be_a_pem_public_key(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    private_looking = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    for bad in ("ssh-ed25519 AAAA", private_looking):
        response = client.post(API, json=site_body(public_key=bad), headers=admin)

        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "public_key"
        assert "PEM" in response.json()["errors"][0]["reason"]
    assert client.get(API, headers=admin).json()["count"] == 2


def test_invalid_features_name_the_field(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    features = {"state_dim": 0, "action_dim": 6, "fps": 30}

    response = client.post(API, json=site_body(features=features), headers=admin)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "features.state_dim"


def test_duplicate_name_is_409_and_changes_nothing(
    client: TestClient, world: World, session: Session
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    own = client.get(f"{API}/{world.own_site_id}", headers=admin).json()
    other = client.get(f"{API}/{world.other_site_id}", headers=admin).json()

    duplicate = client.post(API, json=site_body(name=own["name"]), headers=admin)
    rename = client.patch(
        f"{API}/{world.other_site_id}", json={"name": own["name"], "hardware": "x"}, headers=admin
    )

    assert duplicate.status_code == 409
    assert duplicate.json()["errors"] == [{"field": "name", "reason": "already in use"}]
    assert rename.status_code == 409
    assert client.get(f"{API}/{world.other_site_id}", headers=admin).json() == other
    assert len(session.exec(select(Site)).all()) == 2


def test_deleting_a_site_revokes_its_tokens_and_keeps_the_record_of_access(
    client: TestClient, world: World, session: Session
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    operator = bearer(world.secrets["operator_own"] or "")
    site_name = client.get(f"{API}/{world.own_site_id}", headers=admin).json()["name"]
    client.post(f"{API}/{world.own_site_id}/approve", json={"reason": "ok"}, headers=admin)

    assert client.delete(f"{API}/{world.own_site_id}", headers=admin).status_code == 204

    tokens = session.exec(select(ApiToken).where(ApiToken.role == Role.operator)).all()
    kept = [t for t in tokens if t.token_hash == hash_token(world.secrets["operator_own"] or "")]
    assert len(kept) == 1 and kept[0].revoked and kept[0].site_id is None
    listed = client.get("/api/v1/tokens", headers=admin).json()["data"]
    assert any(t["name"] == kept[0].name and t["revoked"] for t in listed)
    assert client.get(API, headers=operator).status_code == 401
    audit = session.exec(select(SiteAudit).order_by(col(SiteAudit.id))).all()
    own = [row for row in audit if row.site_name == site_name]
    assert [row.action for row in own] == ["register", "approve", "delete"]
    assert all(row.site_id is None for row in own)
    assert own[-1].actor and kept[0].name in own[-1].reason


def test_enrolment_token_registers_one_site_and_belongs_to_it(
    client: TestClient, world: World, session: Session
) -> None:
    secret = world.secrets["operator_unbound"] or ""
    operator = bearer(secret)

    before = client.get(API, headers=operator).json()
    created = client.post(API, json=site_body(name="lab-enrolled"), headers=operator)
    second = client.post(API, json=site_body(name="lab-second"), headers=operator)
    listed = client.get(API, headers=operator).json()
    own = client.get(f"{API}/{created.json()['id']}", headers=operator)
    foreign = client.get(f"{API}/{world.own_site_id}", headers=operator)
    audit = client.get(f"{API}/{created.json()['id']}/audit", headers=operator).json()

    assert before == {"data": [], "count": 0}
    assert created.status_code == 201, created.text
    site = created.json()
    assert site["status"] == "pending"
    assert site["compatibility"][0]["compatible"] is True
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).one()
    assert token.site_id == site["id"]
    assert second.status_code == 403
    assert f"belongs to site {site['id']} already" in second.json()["detail"]
    assert [s["id"] for s in listed["data"]] == [site["id"]]
    assert own.status_code == 200
    assert foreign.status_code == 403
    assert [(a["action"], a["actor"]) for a in audit] == [("register", token.name)]
    assert session.exec(select(Site).where(Site.name == "lab-second")).first() is None


def test_enrolment_token_is_bound_only_when_the_site_is_saved(
    client: TestClient, world: World, session: Session
) -> None:
    operator = bearer(world.secrets["operator_unbound"] or "")
    taken = session.get(Site, world.other_site_id)
    assert taken is not None

    duplicate = client.post(API, json=site_body(name=taken.name), headers=operator)
    invalid = client.post(
        API, json=site_body(features={"state_dim": 0, "action_dim": 6, "fps": 30}), headers=operator
    )
    retried = client.post(API, json=site_body(name="lab-after-errors"), headers=operator)

    assert duplicate.status_code == 409
    assert invalid.status_code == 422
    assert retried.status_code == 201, retried.text


def test_operator_with_a_site_cannot_register_another(client: TestClient, world: World) -> None:
    operator = bearer(world.secrets["operator_own"] or "")
    admin = bearer(world.secrets["admin"] or "")

    refused = client.post(API, json=site_body(name="lab-extra"), headers=operator)

    assert refused.status_code == 403
    assert "may not register another" in refused.json()["detail"]
    assert client.get(API, headers=admin).json()["count"] == 2


def test_enrolment_token_reads_no_experiment(client: TestClient, world: World) -> None:
    operator = bearer(world.secrets["operator_unbound"] or "")

    listed = client.get("/api/v1/experiments", headers=operator)
    one = client.get(f"/api/v1/experiments/{world.experiment_id}", headers=operator)

    assert listed.json()["count"] == 0
    assert one.status_code == 403


def test_two_registrations_at_once_bind_the_token_once(app: FastAPI, world: World) -> None:
    """The second sees the token still unbound (read before the first committed): 409, no site."""
    with Session(app.state.engine) as first, Session(app.state.engine) as second:
        token, _ = create_token(session=first, name="enrol", role=Role.operator)
        stale = second.get(ApiToken, token.id)
        assert stale is not None and stale.site_id is None

        site = site_service.register_site(
            session=first, data=SiteCreate.model_validate(site_body(name="lab-a1")), token=token
        )
        with pytest.raises(Conflict, match="registered a site already"):
            site_service.register_site(
                session=second,
                data=SiteCreate.model_validate(site_body(name="lab-a2")),
                token=stale,
            )

        second.expire_all()
        assert second.get(ApiToken, token.id).site_id == site.id  # type: ignore[union-attr]
        assert second.exec(select(Site).where(Site.name == "lab-a2")).first() is None


def test_an_edit_of_a_site_deleted_meanwhile_is_404(app: FastAPI, world: World) -> None:
    """A PATCH that read the site before a DELETE committed (schemathesis found a 500 here)."""
    with Session(app.state.engine) as editing, Session(app.state.engine) as deleting:
        admin, _ = create_token(session=editing, name="admin-2", role=Role.admin)
        body = SiteCreate.model_validate(site_body(name="lab-gone"))
        site = site_service.register_site(session=editing, data=body, token=admin)
        doomed = deleting.get(Site, site.id)
        assert doomed is not None
        site_service.delete_site(session=deleting, site=doomed, actor="admin")

        with pytest.raises(NotFound, match="Site not found"):
            site_service.update_site(
                session=editing, site=site, data=SiteUpdate(hardware="2x RTX 4090"), actor="op"
            )
