"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema, as vendored (for
offline use) by the check-jsonschema package.
"""

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.main import get_command

from app.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def _compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(_compose_schema())

    problems = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)
    ]

    assert problems == []


def test_the_schema_refuses_a_broken_compose_file(compose: dict[str, Any]) -> None:
    broken = {**compose, "services": {"web": {"image": "x", "healthcheck": {"test": 5}}}}

    assert not jsonschema.Draft7Validator(_compose_schema()).is_valid(broken)


def test_services_have_health_checks_and_the_worker_a_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert {"web", "worker", "redis", "postgres"} <= services.keys()
    for name in ("web", "worker", "redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_data_and_checkpoints_live_on_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert {"data", "checkpoints", "postgres", "redis"} <= compose["volumes"].keys()
    for name in ("web", "worker"):
        mounts = services[name]["volumes"]
        assert "data:/data" in mounts
        assert "checkpoints:/data/runs" in mounts  # Settings.checkpoint_dir under FEDVLA_DATA_DIR
        assert services[name]["environment"]["FEDVLA_DATA_DIR"] == "/data"


def test_commands_are_real_fedvla_commands(compose: dict[str, Any]) -> None:
    known = get_command(cli).commands  # type: ignore[attr-defined]
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "fedvla":
            continue
        assert command[1] in known, name
        subcommands = getattr(known[command[1]], "commands", None)
        if subcommands is not None:  # a group such as "db": its subcommand must exist too
            assert command[2] in subcommands, name


def test_environment_names_are_settings(compose: dict[str, Any]) -> None:
    from app.core.config import Settings

    fields = {f"FEDVLA_{name.upper()}" for name in Settings.model_fields}
    for service in ("web", "worker"):
        names = set(compose["services"][service]["environment"])
        assert names <= fields, names - fields


def test_dockerfile_builds_on_python_312_slim_with_ffmpeg() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert re.search(r"^FROM python:3\.12-slim$", dockerfile, re.MULTILINE)
    assert "ffmpeg" in dockerfile
    assert "pip install -e ." in dockerfile
    for copied in ("app", "worker", "migrations", "alembic.ini", "templates", "static"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", dockerfile, re.MULTILINE), copied
