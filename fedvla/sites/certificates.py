"""The SuperLink's TLS material: a private CA and a server certificate signed by it.

Kept in ``<data_dir>/superlink/``: ``ca.crt`` (goes into every startup kit), ``ca.key`` and
``server.key`` (never leave the server, mode 0600), ``server.crt`` (valid for the names and
addresses the SuperNodes dial). Made once; the server certificate is remade when the names it
must cover change.
"""

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvla.core.config import Settings

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> "TlsFiles":
        return cls(
            directory / "ca.crt",
            directory / "ca.key",
            directory / "server.crt",
            directory / "server.key",
        )


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedvla"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _make_ca(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    name = _name("fedvla SuperLink CA")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private_key(files.ca_key, key)
    files.ca_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _make_server_certificate(files: TlsFiles, hosts: list[str]) -> None:
    ca_key = _load_private_key(files.ca_key)
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private_key(files.server_key, key)
    files.server_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def certificate_hosts(path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.DNSName)} | {
        str(v) for v in names.get_values_for_type(x509.IPAddress)
    }


def ensure_tls(directory: Path, hosts: list[str]) -> TlsFiles:
    """The CA and a server certificate for ``hosts`` in ``directory``, made if missing.

    The CA is kept once made (sites trust it); the server certificate is remade if it does not
    cover every host.
    """
    if not hosts:
        raise ValueError("the server certificate needs at least one host name or address")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles.in_directory(directory)
    if not (files.ca_certificate.exists() and files.ca_key.exists()):
        _make_ca(files)
        files.server_certificate.unlink(missing_ok=True)
    if not (files.server_certificate.exists() and files.server_key.exists()) or not set(
        hosts
    ) <= certificate_hosts(files.server_certificate):
        _make_server_certificate(files, hosts)
    return files


def tls_hosts(address: str) -> list[str]:
    """The names the SuperLink's certificate covers: the host sites dial, and loopback."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return [host, "localhost", "127.0.0.1"]


def server_tls_hosts(settings: Settings) -> list[str]:
    """The names of the one server certificate: the front's (what sites dial, and loopback)
    and the SuperLink's own host, which the front and the coordinator's processes dial."""
    hosts = tls_hosts(settings.superlink_address)
    return hosts if settings.superlink_host in hosts else [*hosts, settings.superlink_host]
