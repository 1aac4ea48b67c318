"""The SuperLink's public front: Caddy, forwarding the Fleet API's routes and nothing else.

flwr 1.42's SuperLink serves its Fleet, Control and ServerAppIo APIs on one HTTPS port, and
the open-source Control API has no authentication. So the SuperLink binds loopback (or a
private interface) and Caddy faces the sites: TLS with the SuperLink's own server certificate
(the kit's ``ca.crt`` verifies it), ``POST`` on the exact paths of Flower's Fleet router
proxied to the SuperLink over TLS, and 404 for everything else. docker compose runs the same
site block (``deploy/Caddyfile``, checked against :func:`fleet_site_block`).
"""

import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from typing import IO

from fedvla.core.config import Settings
from fedvla.sites.certificates import TlsFiles

CADDY = "caddy"
INSTALL_HINT = (
    "install Caddy 2.6 or newer (Debian/Ubuntu: `sudo apt-get install caddy`; elsewhere "
    "https://caddyserver.com/docs/install), or set FEDVLA_SUPERLINK_FRONT=false where another "
    "front forwards the Fleet API (docker compose's caddy service)"
)
REFUSED_BODY = "Only the Flower Fleet API is served here."


class FrontError(RuntimeError):
    """Caddy is missing, or it did not come up."""


def fleet_paths() -> list[str]:
    """Every path of Flower's Fleet router (all POST): what SuperNodes call."""
    from fastapi.routing import APIRoute
    from flwr.superlink.routers.fleet.router import router

    return [route.path for route in router.routes if isinstance(route, APIRoute)]


def fleet_site_block(
    *, address: str, bind: str, certificate: str, key: str, upstream: str, ca: str
) -> str:
    """A Caddyfile site block: ``address`` serves the Fleet API of the SuperLink at
    ``upstream`` (host:port, HTTPS verified with ``ca``) and refuses the rest."""
    paths = " ".join(fleet_paths())
    return f"""{address} {{
	bind {bind}
	tls {certificate} {key}
	@fleet {{
		method POST
		path {paths}
	}}
	handle @fleet {{
		reverse_proxy https://{upstream} {{
			transport http {{
				tls_trusted_ca_certs {ca}
			}}
		}}
	}}
	handle {{
		respond "{REFUSED_BODY}" 404
	}}
}}
"""


def dial_host(host: str) -> str:
    """Where a process on this host reaches a service bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def caddyfile(settings: Settings, tls: TlsFiles) -> str:
    """The embedded front's whole configuration: no admin endpoint, no
    redirect listener on port 80; only the Fleet site on fleet_host:fleet_port."""
    block = fleet_site_block(
        address=f"https://:{settings.fleet_port}",
        bind=settings.fleet_host or "0.0.0.0",
        certificate=str(tls.server_certificate),
        key=str(tls.server_key),
        upstream=f"{dial_host(settings.superlink_host)}:{settings.superlink_port}",
        ca=str(tls.ca_certificate),
    )
    return "{\n\tadmin off\n\tauto_https disable_redirects\n}\n\n" + block


def caddy_path() -> str:
    found = shutil.which(CADDY)
    if found is None:
        raise FrontError(
            f"`{CADDY}` is not on PATH: the SuperLink's public front needs it; {INSTALL_HINT}"
        )
    return found


class FleetFront:
    """Caddy as a child process, its configuration in <superlink_dir>/front/Caddyfile and
    its output in <superlink_dir>/front.log."""

    def __init__(self, settings: Settings, tls: TlsFiles) -> None:
        self.settings = settings
        self.tls = tls
        self.directory = settings.superlink_dir / "front"
        self.log_path = settings.superlink_dir / "front.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        caddy = caddy_path()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "Caddyfile"
        config.write_text(caddyfile(self.settings, self.tls))
        # Caddy keeps its own state under XDG directories: ours, not the user's.
        env = {
            **env,
            "XDG_DATA_HOME": str(self.directory / "data"),
            "XDG_CONFIG_HOME": str(self.directory / "config"),
        }
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [caddy, "run", "--config", str(config), "--adapter", "caddyfile"],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def answers(self) -> bool:
        """Whether the front answers with its refusal (a GET of / over verified TLS)."""
        host = dial_host(self.settings.fleet_host)
        context = ssl.create_default_context(cafile=str(self.tls.ca_certificate))
        try:
            urllib.request.urlopen(
                f"https://{host}:{self.settings.fleet_port}/", timeout=2, context=context
            )
        except urllib.error.HTTPError as error:
            return error.code == 404
        except (OSError, ssl.SSLError):
            return False
        return False

    def wait_ready(self, deadline: float) -> None:
        while not self.answers():
            if self.process is not None and self.process.poll() is not None:
                raise FrontError(
                    f"caddy exited with {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise FrontError(f"caddy did not answer in time; see {self.log_path}")
            time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
