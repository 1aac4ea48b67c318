"""The SuperLink's certificates, its command line, and a node status when it is away."""

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from fedvla.core.config import Settings
from fedvla.sites.certificates import certificate_hosts, ensure_tls
from fedvla.sites.superlink import superlink_command
from tests.api.conftest import World
from tests.factories import bearer


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, ["fl.example.org", "localhost", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    assert certificate_hosts(files.server_certificate) == {
        "fl.example.org",
        "localhost",
        "127.0.0.1",
    }
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert files.ca_key.stat().st_mode & 0o077 == 0
    assert files.server_key.stat().st_mode & 0o077 == 0


def test_the_ca_is_kept_and_the_server_certificate_follows_the_hosts(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path, ["a.example.org"])
    ca, server = first.ca_certificate.read_bytes(), first.server_certificate.read_bytes()
    assert ensure_tls(tmp_path, ["a.example.org"]).server_certificate.read_bytes() == server
    moved = ensure_tls(tmp_path, ["b.example.org"])
    assert moved.ca_certificate.read_bytes() == ca  # sites keep trusting the same CA
    assert certificate_hosts(moved.server_certificate) == {"b.example.org"}


def test_superlink_runs_with_tls_node_auth_its_own_port_and_no_installs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, superlink_port=9555)
    command = superlink_command(settings)
    assert command[0].endswith("flower-superlink")
    joined = " ".join(command)
    for flag in (
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        f"--database {tmp_path / 'superlink' / 'state.db'}",
        "--port 9555",
        f"--ssl-ca-certfile {tmp_path / 'superlink' / 'tls' / 'ca.crt'}",
    ):
        assert flag in joined
    assert "--insecure" not in command


def test_node_status_says_when_the_superlink_is_away(client: TestClient, world: World) -> None:
    answer = client.get(
        f"/api/v1/sites/{world.own_site_id}/node",
        headers=bearer(world.secrets["operator_own"] or ""),
    )
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"].startswith("The SuperLink at 127.0.0.1:9092 does not answer")
    other = client.get(
        f"/api/v1/sites/{world.own_site_id}/node",
        headers=bearer(world.secrets["operator_other"] or ""),
    )
    assert other.status_code == 403
