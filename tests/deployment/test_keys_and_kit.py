"""Node keys (made at the site, public half only at the server), the startup kit, site check."""

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.testclient import TestClient
from sqlmodel import Session
from typer.testing import CliRunner

from fedvla.cli.main import cli
from fedvla.core.config import Settings
from fedvla.core.errors import Conflict
from fedvla.core.models import Site, SiteStatus
from fedvla.core.public_keys import parse_public_key
from fedvla.core.services import sites as site_service
from fedvla.sites import startup_kit
from tests.api.conftest import World
from tests.factories import bearer, deployment_body, make_experiment, make_site, site_body

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Kits carry the address sites dial: here, on purpose, this machine's loopback."""
    return settings.model_copy(update={"superlink_public_address": "127.0.0.1:9092"})


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, "unset, so kits would dial 127.0.0.1:9092"),
        ({"fleet_host": "0.0.0.0"}, "0.0.0.0 is not an address to dial"),
        ({"superlink_public_address": "0.0.0.0:9092"}, "0.0.0.0 is not an address to dial"),
    ],
)
def test_no_kit_dials_an_address_a_remote_site_cannot_reach(
    overrides: dict[str, str], reason: str
) -> None:
    with pytest.raises(Conflict) as refused:
        startup_kit.dialable_address(Settings(environment="test", **overrides))  # type: ignore[arg-type]

    [problem] = refused.value.errors
    assert (problem.field, problem.reason) == ("superlink_public_address", reason)
    assert "set FEDVLA_SUPERLINK_PUBLIC_ADDRESS" in str(refused.value)


def test_a_public_address_or_a_named_host_is_what_kits_dial() -> None:
    public = Settings(environment="test", superlink_public_address="fl.lab.org:443")
    named = Settings(environment="test", fleet_host="10.0.0.5")

    assert startup_kit.dialable_address(public) == "fl.lab.org:443"
    assert startup_kit.dialable_address(named) == "10.0.0.5:9092"


def _pem(key: object) -> str:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (rsa.generate_private_key(65537, 2048).public_key(), "a RSA key"),
        (ed25519.Ed25519PrivateKey.generate().public_key(), "a Ed25519 key"),
        (ec.generate_private_key(ec.SECP256K1()).public_key(), "EC curve secp256k1"),
    ],
)
def test_keys_flower_cannot_use_are_refused_naming_public_key(
    client: TestClient, world: World, key: object, reason: str
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    answer = client.post("/api/v1/sites", json=site_body(public_key=_pem(key)), headers=admin)
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["errors"]
    assert problem["field"] == "public_key"
    assert reason in problem["reason"]


def test_keygen_writes_the_pair_at_the_site_and_prints_only_the_public_key(
    client: TestClient, world: World, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["site", "keygen", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    private = tmp_path / "keys" / "supernode.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    loaded = serialization.load_ssh_private_key(private.read_bytes(), None)  # as flwr loads it
    assert isinstance(loaded, ec.EllipticCurvePrivateKey) and loaded.curve.name == "secp384r1"
    assert "PRIVATE" not in result.stdout
    printed = result.stdout.strip() + "\n"
    assert parse_public_key(printed).public_numbers() == loaded.public_key().public_numbers()

    admin = bearer(world.secrets["admin"] or "")
    answer = client.post("/api/v1/sites", json=site_body(public_key=printed), headers=admin)
    assert answer.status_code == 201, answer.text
    # The OpenSSH one-liner is accepted too and stored as the same PEM.
    ssh_line = (tmp_path / "keys" / "supernode.pub").read_text()
    other = client.post("/api/v1/sites", json=site_body(public_key=ssh_line), headers=admin).json()
    assert other["public_key"] == answer.json()["public_key"]

    again = CliRunner().invoke(cli, ["site", "keygen", str(tmp_path / "keys")])
    assert again.exit_code == 2
    assert "exists; pass --force" in again.output


def _approved(session: Session, **overrides: object) -> Site:
    site = make_site(session, **overrides)
    return site_service.set_status(
        session=session, site=site, status=SiteStatus.approved, actor="t", reason=""
    )


def _kit(client: TestClient, site_id: int, secret: str | None) -> zipfile.ZipFile:
    answer = client.get(f"/api/v1/sites/{site_id}/startup-kit", headers=bearer(secret or ""))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(answer.content))


def test_startup_kit_has_everything_and_no_private_key(
    client: TestClient, session: Session, world: World
) -> None:
    own = session.get(Site, world.own_site_id)
    assert own is not None
    site_service.set_status(
        session=session, site=own, status=SiteStatus.approved, actor="t", reason=""
    )
    kit = _kit(client, world.own_site_id, world.secrets["operator_own"])

    names = sorted(n.removeprefix("fedvla-site/") for n in kit.namelist())
    assert names == [
        "README.md",
        "ca.crt",
        "docker-compose.yml",
        "kit.json",
        "kubernetes.yaml",
        "supernode.sh",
    ]
    text = {n: kit.read(f"fedvla-site/{n}").decode() for n in names}
    assert all("PRIVATE KEY" not in body for body in text.values())
    assert text["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    config = json.loads(text["kit.json"])
    assert config["superlink"] == "127.0.0.1:9092"
    assert [e["id"] for e in config["experiments"]] == [world.experiment_id]
    assert config["supernode_args"][:2] == ["--superlink", "127.0.0.1:9092"]
    assert 'exec "$PYTHON" -m fedvla.orchestration.site_node' in text["supernode.sh"]
    assert '--auth-supernode-private-key "$KEYS/supernode.key"' in text["supernode.sh"]
    assert '--port "${FEDVLA_SUPERNODE_PORT:-9094}"' in text["supernode.sh"]
    assert f'site-label="{own.name}"' in text["supernode.sh"]
    assert f'dataset-repo-id="{own.dataset}"' in text["supernode.sh"]
    assert "fedvla site check" in text["README.md"] and "fedvla site keygen" in text["README.md"]
    assert "kind: Deployment" in text["kubernetes.yaml"]
    assert "secretName: fedvla-supernode-key" in text["kubernetes.yaml"]
    assert "nvidia.com/gpu: 1" in text["kubernetes.yaml"]
    assert (
        "fsGroup: 1000" in text["kubernetes.yaml"] and "medium: Memory" in text["kubernetes.yaml"]
    )
    compose = yaml.safe_load(text["docker-compose.yml"])["services"]["supernode"]
    assert "fedvla.orchestration.site_node" in compose["command"]
    assert compose["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert compose["shm_size"] == "8gb"
    assert compose["user"] == "${FEDVLA_SITE_UID:-1000}:${FEDVLA_SITE_GID:-1000}"
    assert compose["image"] == "${FEDVLA_IMAGE:-fedvla-worker:latest}"
    assert "${HF_HOME:-~/.cache/huggingface}:/data/huggingface" in compose["volumes"]
    assert "${FEDVLA_SITE_KEYS:-../keys}:/keys:ro" in compose["volumes"]


def test_startup_kit_only_for_admins_and_the_own_operator_of_an_approved_site(
    client: TestClient, session: Session, world: World
) -> None:
    url = f"/api/v1/sites/{world.own_site_id}/startup-kit"
    pending = client.get(url, headers=bearer(world.secrets["admin"] or ""))
    assert pending.status_code == 409
    assert "approved sites" in pending.json()["detail"]
    assert pending.json()["errors"] == [{"field": "status", "reason": "pending, not approved"}]
    own = session.get(Site, world.own_site_id)
    assert own is not None
    site_service.set_status(
        session=session, site=own, status=SiteStatus.approved, actor="t", reason=""
    )
    expected = {"anonymous": 401, "viewer": 403, "operator_other": 403}
    for actor, code in expected.items():
        secret = world.secrets[actor]
        headers = bearer(secret) if secret else {}
        assert client.get(url, headers=headers).status_code == code, actor
    _kit(client, world.own_site_id, world.secrets["admin"])


def test_a_local_dataset_path_becomes_the_node_config_root(
    client: TestClient, session: Session, world: World
) -> None:
    site = _approved(session, dataset="/srv/robot/pick_cube")
    assert site.id is not None
    kit = _kit(client, site.id, world.secrets["admin"])
    script = kit.read("fedvla-site/supernode.sh").decode()
    assert 'dataset-repo-id="local/pick_cube" dataset-root="/srv/robot/pick_cube"' in script
    compose = kit.read("fedvla-site/docker-compose.yml").decode()
    assert '"/srv/robot/pick_cube:/dataset:ro"' in compose
    assert 'dataset-root=\\"/dataset\\"' in compose


# --------------------------------------------------------------------------- fedvla site check


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("site-datasets")
    good = generate_dataset(root / "good", SyntheticSpec(episodes=2, frames_per_episode=4))
    bad = generate_dataset(
        root / "bad",
        SyntheticSpec(episodes=2, frames_per_episode=4, cameras=("wrist",), fps=15, state_dim=5),
    )
    return {"good": good, "bad": bad}


FRONT_FEATURES = {
    "state_dim": 6,
    "action_dim": 6,
    "camera_keys": ["observation.images.front"],
    "camera_resolutions": {"observation.images.front": [24, 32, 3]},
    "fps": 30,
}
"""The features of the 'good' dataset's site: one front camera."""


def _kit_json(client: TestClient, session: Session, world: World, tmp_path: Path) -> Path:
    """kit.json of a site joining an experiment whose reference site matches 'good'."""
    reference = _approved(session, features=FRONT_FEATURES)
    joining = _approved(session, features=FRONT_FEATURES)
    assert reference.id is not None and joining.id is not None
    make_experiment(session, deployment_body([reference.id, joining.id]))
    kit = _kit(client, joining.id, world.secrets["admin"])
    path = tmp_path / "kit.json"
    path.write_bytes(kit.read("fedvla-site/kit.json"))
    return path


def test_site_check_passes_a_fitting_dataset_and_reports_what_it_found(
    client: TestClient, session: Session, world: World, tmp_path: Path, datasets: dict[str, Path]
) -> None:
    kit = _kit_json(client, session, world, tmp_path)
    result = CliRunner().invoke(
        cli, ["site", "check", "--dataset", str(datasets["good"]), "--experiment-config", str(kit)]
    )
    assert result.exit_code == 0, result.output
    assert "state: 6 dims" in result.output
    assert "cameras: observation.images.front [24, 32, 3]" in result.output
    assert "fps: 30; episodes: 2; frames: 8; tasks: 2" in result.output
    assert "Against experiment" in result.output and ": FAIL" not in result.output
    assert "Against the site's registered declaration: OK" in result.output


def test_site_check_fails_a_mismatched_dataset_naming_each_fix(
    client: TestClient, session: Session, world: World, tmp_path: Path, datasets: dict[str, Path]
) -> None:
    kit = _kit_json(client, session, world, tmp_path)
    result = CliRunner().invoke(
        cli, ["site", "check", "--dataset", str(datasets["bad"]), "--experiment-config", str(kit)]
    )
    assert result.exit_code == 1, result.output
    assert ": FAIL" in result.output
    assert "[error] state_dim: state has 5 dimensions, the experiment's has 6" in result.output
    assert (
        "[warning] camera_keys: camera 'observation.images.wrist' is not in the experiment; "
        "fix: map it to 'observation.images.front' (the startup kit's node config does"
    ) in result.output
    assert "[error] fps: recorded at 15 fps, the experiment at 30 fps" in result.output


def test_site_check_explains_a_missing_dataset_or_kit(tmp_path: Path) -> None:
    kit = tmp_path / "kit.json"
    kit.write_text(json.dumps({"site": {"features": {}}, "experiments": []}))
    missing = CliRunner().invoke(
        cli, ["site", "check", "--dataset", str(tmp_path / "nope"), "--experiment-config", str(kit)]
    )
    assert missing.exit_code == 2
    assert "is missing (no such folder)" in missing.output
    no_kit = CliRunner().invoke(
        cli, ["site", "check", "--dataset", str(tmp_path), "--experiment-config", "nope.json"]
    )
    assert no_kit.exit_code == 2
    assert "cannot read nope.json" in no_kit.output


def test_site_check_prints_the_registration_body_the_api_accepts(
    client: TestClient, world: World, tmp_path: Path, datasets: dict[str, Path]
) -> None:
    from fedvla.sites.keys import generate_node_keys

    keys = generate_node_keys(tmp_path / "keys")
    result = CliRunner().invoke(
        cli,
        [
            "site",
            "check",
            "--dataset",
            str(datasets["good"]),
            "--name",
            "lab-cli",
            "--public-key",
            str(keys.public_pem),
            "--hardware",
            "RTX 4090",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)  # the body alone on stdout: `> body.json` works
    assert body["name"] == "lab-cli" and body["robot_type"] == "so100"  # so100_follower
    assert body["dataset"] == str(datasets["good"].resolve())
    assert body["features"]["camera_resolutions"] == {"observation.images.front": [24, 32, 3]}
    assert (body["features"]["fps"], body["features"]["frames"]) == (30, 8)
    assert len(body["features"]["tasks"]) == 2
    operator = world.secrets["operator_unbound"]
    assert operator is not None
    answer = client.post("/api/v1/sites", json=body, headers=bearer(operator))
    assert answer.status_code == 201, answer.text
    assert answer.json()["features"] == body["features"]


def test_site_check_without_a_kit_explains_a_bad_dataset_or_key(tmp_path: Path) -> None:
    def check(dataset: Path, *extra: str) -> str:
        result = CliRunner().invoke(cli, ["site", "check", "--dataset", str(dataset), *extra])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return result.output

    assert "is missing (no such folder)" in check(tmp_path / "nope")
    assert "is not a LeRobot dataset: it has no meta/info.json" in check(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{")
    assert "meta/info.json is unreadable or not JSON" in check(tmp_path)
    assert "cannot read the public key" in check(tmp_path, "--public-key", str(tmp_path / "k"))


def test_kit_files_are_what_their_tools_accept(
    client: TestClient, session: Session, world: World
) -> None:
    """The site node's command passes flower-supernode's arguments, which its parser reads;
    compose and Kubernetes files are valid."""
    import shlex

    import jsonschema
    import yaml
    from flwr.common.config import parse_config_args
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    from tests.test_compose import _compose_schema

    site = _approved(session, dataset="/srv/robot/pick cube")
    assert site.id is not None
    kit = _kit(client, site.id, world.secrets["admin"])
    script = kit.read("fedvla-site/supernode.sh").decode()
    command = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " "))
    assert command[:3] == ["$PYTHON", "-m", "fedvla.orchestration.site_node"]
    assert command[-2:] == ["--port", "${FEDVLA_SUPERNODE_PORT:-9094}"]
    args = _parse_args_run_supernode().parse_args([*command[3:-1], "9094"])  # as sh expands it
    assert args.port == 9094
    assert args.superlink == "127.0.0.1:9092"
    assert args.root_certificates == "ca.crt"
    assert parse_config_args([args.node_config]) == {
        "site-label": site.name,
        "dataset-repo-id": "local/pick cube",
        "dataset-root": "/srv/robot/pick cube",
        "data-dir": "var",
    }

    compose = yaml.safe_load(kit.read("fedvla-site/docker-compose.yml"))
    jsonschema.Draft7Validator(_compose_schema()).validate(compose)
    compose_args = compose["services"]["supernode"]["command"]
    assert compose_args[:3] == ["python", "-m", "fedvla.orchestration.site_node"]
    parsed = _parse_args_run_supernode().parse_args(compose_args[3:])
    assert parse_config_args([parsed.node_config])["dataset-root"] == "/dataset"

    config_map, deployment = yaml.safe_load_all(kit.read("fedvla-site/kubernetes.yaml"))
    assert config_map["data"]["ca.crt"] == kit.read("fedvla-site/ca.crt").decode()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "fedvla.orchestration.site_node"]
    parsed = _parse_args_run_supernode().parse_args(container["args"])
    assert parsed.auth_supernode_private_key == "/keys/supernode.key"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dataset"]["hostPath"]["path"] == "/srv/robot/pick cube"
    assert volumes["key"]["secret"]["secretName"] == "fedvla-supernode-key"


def test_kit_maps_the_sites_cameras_to_the_experiments(
    client: TestClient, session: Session, world: World
) -> None:
    from flwr.common.config import parse_config_args
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    front = {"state_dim": 6, "action_dim": 6, "fps": 30, "camera_keys": ["front"]}
    reference = _approved(session, features=front)
    wrist = _approved(session, features={**front, "camera_keys": ["observation.images.wrist"]})
    assert reference.id is not None and wrist.id is not None
    experiment = make_experiment(session, deployment_body([reference.id, wrist.id]))

    launch = client.post(
        f"/api/v1/experiments/{experiment.id}/runs",
        headers=bearer(world.secrets["admin"] or ""),
    )
    assert launch.status_code == 202, launch.text  # a mapped camera is no reason to refuse
    kit = _kit(client, wrist.id, world.secrets["admin"])
    config = json.loads(kit.read("fedvla-site/kit.json"))
    assert config["camera_map"] == {"observation.images.wrist": "observation.images.front"}
    args = _parse_args_run_supernode().parse_args(config["supernode_args"])
    node = parse_config_args([args.node_config])
    assert node["camera-map"] == "observation.images.wrist=observation.images.front"


def test_renamed_cameras_on_a_real_dataset(datasets: dict[str, Path]) -> None:
    from fedvla.core.experiment_config import DatasetRef
    from fedvla.engine.camera_map import parse_camera_map
    from fedvla.engine.data.features import DatasetError
    from fedvla.engine.federation import task
    from fedvla.engine.renamed_cameras import apply_camera_map

    data = task.open_dataset(
        DatasetRef(repo_id="local/bad", root=str(datasets["bad"])), chunk_size=2, owner="t"
    )
    renamed = apply_camera_map(
        data, parse_camera_map("observation.images.wrist=observation.images.front")
    )
    assert "observation.images.front" in renamed.features
    assert "observation.images.wrist" not in renamed.features
    # Frames become floats on the device under the names the policy knows them by.
    assert "observation.images.front" in renamed.camera_keys
    assert "observation.images.wrist" not in renamed.camera_keys
    item = renamed.dataset[0]
    assert "observation.images.front" in item and "observation.images.wrist" not in item
    assert len(renamed.dataset) == len(data.dataset)
    with pytest.raises(DatasetError, match="cameras the dataset lacks"):
        apply_camera_map(data, {"observation.images.top": "observation.images.front"})
    with pytest.raises(DatasetError, match=r"is not 'observation\.images\.<site camera>="):
        parse_camera_map("wrist=front")


def test_site_check_reads_the_experiments_as_they_are_now_on_the_server(
    settings: Settings,
    session: Session,
    world: World,
    tmp_path: Path,
    datasets: dict[str, Path],
) -> None:
    """A site whose kit was downloaded before it joined the experiment: with its operator's
    token the check reads the experiment from the server the kit names; without it, or when the
    server is out of reach, it checks the kit's copy and says so."""
    import httpx

    from fedvla.core.models import Role
    from tests.factories import make_token
    from tests.orchestration.conftest import LiveServer

    reference = _approved(session, features=FRONT_FEATURES)
    joining = _approved(session, features=FRONT_FEATURES)
    assert reference.id is not None and joining.id is not None
    token = make_token(session, Role.operator, site_id=joining.id)
    path = tmp_path / "kit.json"

    def check(dataset: str, *extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            cli,
            [
                *("site", "check", "--dataset", str(datasets[dataset])),
                *("--experiment-config", str(path), *extra),
            ],
            env={"FEDVLA_TOKEN": None},
        )
        return result.exit_code, result.output

    with LiveServer(settings) as server:
        api = f"{server.url}/api/v1"
        kit = httpx.get(f"{api}/sites/{joining.id}/startup-kit", headers=bearer(token))
        assert kit.status_code == 200, kit.text
        path.write_bytes(zipfile.ZipFile(io.BytesIO(kit.content)).read("fedvla-site/kit.json"))
        frozen = json.loads(path.read_text())
        assert (frozen["api"], frozen["experiments"]) == (api, [])
        experiment = make_experiment(session, deployment_body([reference.id, joining.id]))

        code, output = check("bad", "--token", token)
        assert code == 1, output
        assert f"as the server defines them now ({api}/sites/{joining.id}/startup-kit/config)" in (
            output
        )
        assert f"Against experiment {experiment.name!r}" in output
        assert "[error] fps: recorded at 15 fps, the experiment at 30 fps" in output

        code, output = check("good")
        assert code == 0, output
        assert "Note: checking against the experiments as they were when this kit was " in output
        assert "no token to read them now" in output and "Against experiment" not in output

        other = make_token(session, Role.operator, site_id=reference.id)
        code, output = check("good", "--token", other)
        assert code == 0 and "answered 403 Operators may only access their own site" in output
        viewer = world.secrets["viewer"] or ""
        config_url = f"{api}/sites/{joining.id}/startup-kit/config"
        assert httpx.get(config_url, headers=bearer(viewer)).status_code == 403
        assert httpx.get(config_url).status_code == 401

    code, output = check("good", "--token", token)
    assert code == 0 and f"cannot read them now from {config_url}" in output


def test_site_check_sends_no_token_over_plain_http_to_another_host(
    tmp_path: Path, datasets: dict[str, Path]
) -> None:
    kit = tmp_path / "kit.json"
    body = {"api": "http://fl.lab.org/api/v1", "site": {"id": 1, "features": {}}}
    kit.write_text(json.dumps({**body, "experiments": []}))
    result = CliRunner().invoke(
        cli,
        ["site", "check", "--dataset", str(datasets["good"]), "--experiment-config", str(kit)],
        env={"FEDVLA_TOKEN": "fvla_secret"},
    )
    assert "http://fl.lab.org/api/v1/sites/1/startup-kit/config is not HTTPS" in result.output
    assert "fvla_secret" not in result.output
