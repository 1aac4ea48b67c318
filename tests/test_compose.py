"""docker-compose.yml and the two Dockerfiles, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema, as vendored (for
offline use) by the check-jsonschema package.
"""

import json
import re
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.main import get_command

from fedvla.cli.main import cli

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
    from fedvla.core.config import Settings

    fields = {f"FEDVLA_{name.upper()}" for name in Settings.model_fields}
    fields.add("HF_HOME")  # Hugging Face's cache, which the app's checks and the workers share
    for service in ("web", "worker", "superlink"):
        names = set(compose["services"][service]["environment"]) - {"FORWARDED_ALLOW_IPS"}
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
    for copied in ("README.md", "fedvla"):
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


def test_only_the_front_publishes_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]

    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"caddy": ["80:80", "443:443", "9092:9092"]}
    assert services["web"]["expose"] == ["8080"]
    assert services["superlink"]["expose"] == ["9093"]


def test_the_superlink_binds_its_private_name_and_sites_dial_the_front(
    compose: dict[str, Any],
) -> None:
    from fedvla.core.config import WILDCARD_HOSTS, Settings

    superlink = compose["services"]["superlink"]
    env = superlink["environment"]

    assert superlink["command"] == ["fedvla", "superlink"]
    assert superlink["image"] == compose["services"]["worker"]["image"]  # runs the engine
    assert env["FEDVLA_SUPERLINK_FRONT"] == "false"  # the caddy service is its front
    assert env["FEDVLA_SUPERLINK_HOST"] == "superlink" not in WILDCARD_HOSTS
    assert env["FEDVLA_SUPERLINK_PUBLIC_ADDRESS"].endswith(":9092")
    settings = Settings(
        superlink_host=env["FEDVLA_SUPERLINK_HOST"],
        superlink_port=int(env["FEDVLA_SUPERLINK_PORT"]),
        superlink_front=False,
    )
    for name in ("web", "worker", "superlink"):  # one certificate, made where it is missing
        assert "tls:/data/superlink/tls" in compose["services"][name]["volumes"], name
        assert compose["services"][name]["environment"]["FEDVLA_SUPERLINK_HOST"] == "superlink"
    assert "tls:/fedvla/tls:ro" in compose["services"]["caddy"]["volumes"]
    assert settings.superlink_port == 9093


def test_the_web_app_trusts_the_fronts_scheme_so_cookies_are_secure(
    compose: dict[str, Any],
) -> None:
    web = compose["services"]["web"]

    assert web["environment"]["FORWARDED_ALLOW_IPS"] == "*"  # read by uvicorn
    assert "--host" in web["command"]  # inside its container; no published port


def _caddy_json(env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [
            "caddy",
            "adapt",
            "--adapter",
            "caddyfile",
            "--config",
            str(ROOT / "deploy" / "Caddyfile"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_the_front_serves_https_redirects_http_and_passes_only_the_fleet_api(
    compose: dict[str, Any],
) -> None:
    config = _caddy_json({"FEDVLA_PUBLIC_HOST": "fl.example.org"})
    servers = {tuple(s["listen"]): s for s in config["apps"]["http"]["servers"].values()}

    assert config["admin"] == {"disabled": True}
    assert set(servers) == {(":80",), (":443",), ("0.0.0.0:9092",)}
    (redirect,) = servers[(":80",)]["routes"]
    assert redirect["match"] == [{"host": ["fl.example.org"]}]
    response = redirect["handle"][0]["routes"][0]["handle"][0]
    assert response["status_code"] == 301
    assert response["headers"]["Location"] == ["https://{http.request.host}{http.request.uri}"]
    (dashboard,) = servers[(":443",)]["routes"]
    assert dashboard["match"] == [{"host": ["fl.example.org"]}]
    proxy = dashboard["handle"][0]["routes"][0]["handle"][0]
    assert proxy["upstreams"] == [{"dial": "web:8080"}]
    fleet, rest = servers[("0.0.0.0:9092",)]["routes"]
    assert fleet["match"][0]["method"] == ["POST"]
    assert all(p.startswith("/v1/fleet/") for p in fleet["match"][0]["path"])
    upstream = fleet["handle"][0]["routes"][0]["handle"][0]["upstreams"]
    assert upstream == [{"dial": "superlink:9093"}]
    assert rest["handle"][0]["routes"][0]["handle"][0]["status_code"] == 404


def test_the_fronts_fleet_block_is_the_embedded_ones() -> None:
    from fedvla.sites.fleet_front import fleet_site_block

    tls = "/fedvla/tls"  # where the caddy service mounts the tls volume
    block = fleet_site_block(
        address="https://:9092",
        bind="0.0.0.0",
        certificate=f"{tls}/server.crt",
        key=f"{tls}/server.key",
        upstream="superlink:9093",
        ca=f"{tls}/ca.crt",
    )

    assert (ROOT / "deploy" / "Caddyfile").read_text().endswith("\n" + block)
