"""docker-compose.yml and the two Dockerfiles, checked without a Docker engine.

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
    fields.add("HF_HOME")  # Hugging Face's cache, which the app's checks and the workers share
    for service in ("web", "worker"):
        names = set(compose["services"][service]["environment"])
        assert names <= fields, names - fields


def _dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def test_services_build_the_web_image_or_the_worker_image(compose: dict[str, Any]) -> None:
    services = compose["services"]

    for name, dockerfile in (("migrate", "Dockerfile.web"), ("web", "Dockerfile.web")):
        assert services[name]["build"] == {"context": ".", "dockerfile": dockerfile}, name
    assert services["worker"]["build"] == {"context": ".", "dockerfile": "Dockerfile.worker"}
    assert services["web"]["image"] != services["worker"]["image"]


@pytest.mark.parametrize("name", ["Dockerfile.web", "Dockerfile.worker"])
def test_images_install_from_the_lock_on_python_312_slim(name: str) -> None:
    dockerfile = _dockerfile(name)

    assert re.search(r"^FROM python:3\.12-slim$", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY pyproject\.toml uv\.lock \./$", dockerfile, re.MULTILINE)
    syncs = re.findall(r"^RUN uv sync (.*)$", dockerfile, re.MULTILINE)
    assert syncs and all(s.startswith("--frozen") for s in syncs), syncs
    assert "pip install" not in dockerfile
    for copied in ("app", "worker", "migrations", "alembic.ini", "templates", "static"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", dockerfile, re.MULTILINE), copied


def test_only_the_worker_image_has_the_engine_and_ffmpeg() -> None:
    web, worker = _dockerfile("Dockerfile.web"), _dockerfile("Dockerfile.worker")

    assert all("--extra" not in line for line in web.splitlines() if "uv sync" in line)
    assert "ffmpeg" not in web
    assert all("--extra worker" in line for line in worker.splitlines() if "RUN uv sync" in line)
    assert "ffmpeg" in worker


def test_images_and_bootstrap_use_one_uv_version() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    pinned = re.search(r"^UV_VERSION=(\S+)$", bootstrap, re.MULTILINE)

    assert pinned is not None
    for name in ("Dockerfile.web", "Dockerfile.worker"):
        copied = re.findall(r"ghcr\.io/astral-sh/uv:(\S+)", _dockerfile(name))
        assert copied == [pinned.group(1)], name
