"""Rows made through the real services, for tests that need them to exist."""

from itertools import count
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from app.models import Experiment, Role, Site
from app.schemas.experiments import ExperimentCreate
from app.schemas.sites import SiteCreate
from app.services import experiments as experiment_service
from app.services import sites as site_service
from app.services import tokens as token_service

_numbers = count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_numbers)}"


def public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def site_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("site"),
        "organisation": "Test Lab",
        "robot_type": "so100",
        "dataset": "test/so100_pick",
        "features": {"state_dim": 6, "action_dim": 6, "fps": 30, "camera_keys": ["top"]},
        "public_key": public_key_pem(),
    }
    return {**body, **overrides}


def simulation_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("experiment"),
        "policy": "tiny",
        "num_rounds": 2,
        "min_clients": 2,
        "partition": {"dataset": {"repo_id": "test/so100_pick"}, "num_clients": 2},
    }
    return {**body, **overrides}


def deployment_body(site_ids: list[int], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("deployment"),
        "policy": "tiny",
        "mode": "deployment",
        "min_clients": len(site_ids),
        "site_ids": site_ids,
    }
    return {**body, **overrides}


def make_site(session: Session, **overrides: Any) -> Site:
    return site_service.create_site(
        session=session, data=SiteCreate.model_validate(site_body(**overrides)), actor="tests"
    )


def make_experiment(session: Session, body: dict[str, Any] | None = None) -> Experiment:
    data = ExperimentCreate.model_validate(body or simulation_body())
    return experiment_service.create_experiment(session=session, data=data)


def make_token(session: Session, role: Role, site_id: int | None = None) -> str:
    """A live token's secret."""
    _, secret = token_service.create_token(
        session=session, name=unique(role.value), role=role, site_id=site_id
    )
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
