"""SuperNodes on this machine, started exactly as a site's startup kit starts them.

For the loopback tests and the deployment benchmark (and to try deployment mode on one machine).
"""

import socket
import subprocess
import sys
from pathlib import Path

from fedvla.core.config import Settings
from fedvla.core.models import Site
from fedvla.sites.startup_kit import SITE_NODE_MODULE, supernode_args
from fedvla.sites.superlink import SuperLinkProcess, flwr_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_supernode(
    settings: Settings,
    site: Site,
    *,
    key: Path,
    ca: Path,
    folder: Path,
    data_dir: Path,
    camera_map: dict[str, str] | None = None,
) -> "subprocess.Popen[bytes]":
    """The site's node (fedvla.orchestration.site_node: flower-supernode and the warm site
    trainer) for ``site`` in ``folder`` (its log: folder/supernode.log)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = supernode_args(
        settings, site, ca=str(ca), key=str(key), work_dir=str(data_dir), camera_map=camera_map
    )
    env = flwr_env(settings)
    env["FLWR_HOME"] = str(folder / "flwr-home")
    with (folder / "supernode.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                SITE_NODE_MODULE,
                *args,
                "--port",
                str(free_port()),
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def start_superlink(settings: Settings) -> SuperLinkProcess:
    """Our SuperLink and its front with ``settings`` (its ServerApps read them), ready."""
    process = SuperLinkProcess(settings)
    process.start()
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process
