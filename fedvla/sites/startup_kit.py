"""A site's startup kit: everything an approved site needs to bring its SuperNode online.

The kit is a zip of: README.md, ca.crt (the SuperLink's CA, to verify its TLS certificate),
kit.json (the SuperLink address, the site's declaration, the embodiment of each experiment it
is in: what ``fedvla site check`` compares the local dataset with), supernode.sh (the exact
command line of the site's node, flower-supernode and fedvla's warm site trainer
(fedvla.orchestration.site_node), with the site's node config), docker-compose.yml and
kubernetes.yaml (the same command as a service). It holds no private key: the site generates
its key pair with ``fedvla site keygen`` and only the public key ever reaches the server.
"""

import io
import json
import shlex
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.errors import Conflict
from fedvla.core.experiment_config import Mode
from fedvla.core.models import Experiment, ExperimentSite, Site, SiteStatus
from fedvla.core.services import compatibility
from fedvla.engine.camera_map import NODE_CONFIG_KEY as CAMERA_MAP_KEY
from fedvla.engine.camera_map import format_camera_map
from fedvla.sites.certificates import ensure_tls, server_tls_hosts
from fedvla.sites.keys import INTERPRETER_FILE, PRIVATE_KEY_FILE

KIT_ROOT = "fedvla-site"
KEY_DIR = "keys"
KEY_PATH = f"{KEY_DIR}/{PRIVATE_KEY_FILE}"
CONTAINER_KIT = "/kit"
CONTAINER_DATASET = "/dataset"
CONTAINER_KEY = "/keys/" + PRIVATE_KEY_FILE
CONTAINER_WORK = "/data"
IMAGE = "fedvla-worker:latest"
"""The worker image (Dockerfile.worker: ``docker build -f Dockerfile.worker -t fedvla-worker .``);
the kit's compose file takes FEDVLA_IMAGE instead where a registry holds it."""
CONTAINER_USER = 1000  # the worker image's fedvla user
CONTAINER_HF_HOME = "/data/huggingface"
SUPERNODE_PORT = 9094  # flower-supernode's Runtime API (loopback); FEDVLA_SUPERNODE_PORT moves it
UNDIALABLE_HOSTS = {"0.0.0.0", "::", ""}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
SITE_NODE_MODULE = "fedvla.orchestration.site_node"
SITE_NODE_COMMAND = ["python", "-m", SITE_NODE_MODULE]
"""The site's node: flower-supernode (process isolation) with the warm site trainer."""


def dataset_node_config(dataset: str) -> dict[str, str]:
    """The ClientApp's dataset keys (fedvla.engine.federation.client_app): a repo id, or a local
    folder."""
    if dataset.startswith(("/", "./", "../", "~")):
        return {"dataset-repo-id": f"local/{PurePosixPath(dataset).name}", "dataset-root": dataset}
    return {"dataset-repo-id": dataset}


def node_config(
    site: Site,
    *,
    dataset_root: str | None = None,
    work_dir: str = "var",
    camera_map: dict[str, str] | None = None,
) -> str:
    """``--node-config``: space separated key="value" pairs, as flower-supernode parses them."""
    values = {"site-label": site.name, **dataset_node_config(site.dataset), "data-dir": work_dir}
    if dataset_root is not None:
        values["dataset-root"] = dataset_root
    if camera_map:
        values[CAMERA_MAP_KEY] = format_camera_map(camera_map)
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def supernode_args(
    settings: Settings,
    site: Site,
    *,
    ca: str = "ca.crt",
    key: str = KEY_PATH,
    dataset_root: str | None = None,
    work_dir: str = "var",
    camera_map: dict[str, str] | None = None,
) -> list[str]:
    """flower-supernode's arguments for this site (SITE_NODE_COMMAND passes them on)."""
    return [
        "--superlink",
        settings.superlink_address,
        "--root-certificates",
        ca,
        "--auth-supernode-private-key",
        key,
        "--node-config",
        node_config(site, dataset_root=dataset_root, work_dir=work_dir, camera_map=camera_map),
    ]


def dialable_address(settings: Settings) -> str:
    """The SuperLink address a kit may carry; Conflict when a site elsewhere could not dial it.

    A loopback address is this server's own: it reaches a site only on the same machine, so it
    is written into a kit only when FEDVLA_SUPERLINK_PUBLIC_ADDRESS names it on purpose.
    """
    address = settings.superlink_address
    host = address.rpartition(":")[0].strip("[]")
    fix = "set FEDVLA_SUPERLINK_PUBLIC_ADDRESS to the host:port sites dial (the public front)"
    if host in UNDIALABLE_HOSTS:
        raise Conflict(
            f"Startup kits would dial {address}, which no site can reach: {fix}",
            field="superlink_public_address",
            reason=f"{host or 'an empty host'} is not an address to dial",
        )
    if host in LOOPBACK_HOSTS and not settings.superlink_public_address:
        raise Conflict(
            f"Startup kits would dial {address}, this server's loopback: {fix}",
            field="superlink_public_address",
            reason=f"unset, so kits would dial {address}",
        )
    return address


def experiments_of(session: Session, site: Site) -> list[Experiment]:
    query = (
        select(Experiment)
        .join(ExperimentSite, col(ExperimentSite.experiment_id) == col(Experiment.id))
        .where(ExperimentSite.site_id == site.id, Experiment.mode == Mode.deployment)
        .order_by(col(Experiment.id))
    )
    return list(session.exec(query))


def kit_camera_map(session: Session, site: Site) -> dict[str, str]:
    """The site's cameras renamed to its first deployment experiment's (empty if they agree)."""
    for experiment in experiments_of(session, site):
        assert experiment.id is not None
        renamed = compatibility.cameras_renamed_for(site, _sites_of(session, experiment.id))
        if renamed is not None:
            return renamed
    return {}


def _sites_of(session: Session, experiment_id: int) -> list[Site]:
    query = (
        select(Site)
        .join(ExperimentSite, col(ExperimentSite.site_id) == col(Site.id))
        .where(ExperimentSite.experiment_id == experiment_id)
    )
    return list(session.exec(query))


def kit_config(
    session: Session,
    settings: Settings,
    site: Site,
    camera_map: dict[str, str],
    api_url: str | None = None,
) -> dict[str, Any]:
    """kit.json: what the site's tools need to know (``fedvla site check`` reads it).

    ``api_url`` is the REST API the kit was downloaded from: ``fedvla site check`` reads the
    experiments as they are now there (``GET /sites/{id}/startup-kit/config``, the operator's
    token), this copy only when it cannot."""
    experiments = []
    for experiment in experiments_of(session, site):
        assert experiment.id is not None
        reference = compatibility.reference_site(_sites_of(session, experiment.id)) or site
        experiments.append(
            {
                "id": experiment.id,
                "name": experiment.name,
                "reference_site": reference.name,
                "robot_type": reference.robot_type,
                "features": reference.features,
            }
        )
    return {
        "format": 1,
        **({"api": api_url} if api_url else {}),
        "superlink": settings.superlink_address,
        "site": {
            "id": site.id,
            "name": site.name,
            "robot_type": site.robot_type,
            "dataset": site.dataset,
            "features": site.features,
        },
        "experiments": experiments,
        "camera_map": camera_map,
        "supernode_args": supernode_args(settings, site, camera_map=camera_map),
    }


def _shell_script(settings: Settings, site: Site, camera_map: dict[str, str]) -> str:
    flat = supernode_args(settings, site, camera_map=camera_map)
    pairs = [
        f'{flat[i]} "$KEYS/{PRIVATE_KEY_FILE}"'
        if flat[i] == "--auth-supernode-private-key"
        else f"{flat[i]} {shlex.quote(flat[i + 1])}"
        for i in range(0, len(flat), 2)
    ]
    args = " \\\n  ".join(pairs)
    module = SITE_NODE_COMMAND[-1]
    return f"""#!/bin/sh
# Brings site {site.name!r}'s Flower SuperNode online, from anywhere, after 'fedvla site keygen'
# and 'fedvla site check' (see README.md). Optional settings:
#   FEDVLA_SITE_KEYS       the folder keygen wrote the key pair into; by default {KEY_DIR}/ beside
#                          this file, or beside the kit's folder (keygen ran where the kit was
#                          unzipped)
#   FEDVLA_PYTHON          the Python that has fedvla; by default the one that ran keygen (it
#                          noted itself in that folder's {INTERPRETER_FILE} file)
#   FEDVLA_SUPERNODE_PORT  the node's local Runtime API port, {SUPERNODE_PORT}: one per node on
#                          a host
set -eu
cd "$(dirname "$0")"
if [ -n "${{FEDVLA_SITE_KEYS:-}}" ]; then
  KEYS="$FEDVLA_SITE_KEYS"
elif [ -f {KEY_DIR}/{PRIVATE_KEY_FILE} ]; then
  KEYS={KEY_DIR}
else
  KEYS=../{KEY_DIR}
fi
if [ ! -f "$KEYS/{PRIVATE_KEY_FILE}" ]; then
  echo "no {KEY_DIR}/{PRIVATE_KEY_FILE} beside this kit: run 'fedvla site keygen {KEY_DIR}'" \\
    "in the folder you unzipped it into, or set FEDVLA_SITE_KEYS to the folder keygen" \\
    "wrote" >&2
  exit 2
fi
PYTHON="${{FEDVLA_PYTHON:-$(cat "$KEYS/{INTERPRETER_FILE}" 2>/dev/null || command -v python3)}}"
exec "$PYTHON" -m {module} \\
  {args} \\
  --port "${{FEDVLA_SUPERNODE_PORT:-{SUPERNODE_PORT}}}"
"""


def _compose(settings: Settings, site: Site, camera_map: dict[str, str]) -> str:
    dataset = dataset_node_config(site.dataset).get("dataset-root")
    args = supernode_args(
        settings,
        site,
        ca=f"{CONTAINER_KIT}/ca.crt",
        key=CONTAINER_KEY,
        dataset_root=CONTAINER_DATASET if dataset else None,
        work_dir=CONTAINER_WORK,
        camera_map=camera_map,
    )
    keys = f"${{FEDVLA_SITE_KEYS:-../{KEY_DIR}}}"  # keygen's folder, beside the unzipped kit
    volumes = [f"./ca.crt:{CONTAINER_KIT}/ca.crt:ro", f"{keys}:{Path(CONTAINER_KEY).parent}:ro"]
    if dataset:
        volumes.append(f"{dataset}:{CONTAINER_DATASET}:ro")
    volumes.append("supernode-data:/data")
    volumes.append(f"${{HF_HOME:-~/.cache/huggingface}}:{CONTAINER_HF_HOME}")
    user = f"${{FEDVLA_SITE_UID:-{CONTAINER_USER}}}:${{FEDVLA_SITE_GID:-{CONTAINER_USER}}}"
    lines = [
        f"# Site {site.name!r}: its Flower SuperNode as a service ('docker compose up -d').",
        "# The image is fedvla's worker image: build it from the fedvla repository with",
        "#   docker build -f Dockerfile.worker -t fedvla-worker .",
        "# or set FEDVLA_IMAGE to where your registry holds it. The container runs as the",
        "# user that owns ../keys (or FEDVLA_SITE_KEYS), so it can read the private key (keygen",
        "# made it 0600):",
        "#   FEDVLA_SITE_UID=$(id -u) FEDVLA_SITE_GID=$(id -g) docker compose up -d",
        "services:",
        "  supernode:",
        f"    image: ${{FEDVLA_IMAGE:-{IMAGE}}}",
        "    restart: unless-stopped",
        f"    user: {json.dumps(user)}",
        "    command:",
        *[f"      - {part}" for part in SITE_NODE_COMMAND],
        *[f"      - {json.dumps(arg)}" for arg in args],
        "    environment:",
        '      HF_HUB_OFFLINE: "1"',
        f"      HF_HOME: {CONTAINER_HF_HOME}",
        "    shm_size: 8gb  # the data loader's worker processes hand batches over /dev/shm",
        "    deploy:",
        "      resources:",
        "        reservations:",
        "          devices:",
        "            - driver: nvidia",
        "              count: all",
        "              capabilities: [gpu]",
        "    volumes:",
        *[f"      - {json.dumps(v)}" for v in volumes],
        "volumes:",
        "  supernode-data: {}",
    ]
    return "\n".join(lines) + "\n"


def _kubernetes(settings: Settings, site: Site, ca_pem: str, camera_map: dict[str, str]) -> str:
    name = "fedvla-supernode"
    dataset = dataset_node_config(site.dataset).get("dataset-root")
    args = supernode_args(
        settings,
        site,
        ca="/kit/ca.crt",
        key=CONTAINER_KEY,
        dataset_root=CONTAINER_DATASET if dataset else None,
        work_dir=CONTAINER_WORK,
        camera_map=camera_map,
    )
    ca_block = "\n".join("    " + line for line in ca_pem.strip().splitlines())
    mounts = [
        ("kit", "/kit"),
        ("key", str(Path(CONTAINER_KEY).parent)),
        ("work", CONTAINER_WORK),
        ("shm", "/dev/shm"),
    ]
    volumes = [
        ("kit", f"configMap:\n            name: {name}-kit"),
        ("key", f"secret:\n            secretName: {name}-key\n            defaultMode: 0440"),
        ("work", "emptyDir: {}"),
        ("shm", "emptyDir:\n            medium: Memory"),
    ]
    if dataset:
        mounts.append(("dataset", CONTAINER_DATASET))
        volumes.append(("dataset", f"hostPath:\n            path: {json.dumps(dataset)}"))
    indent = " " * 14
    mount_yaml = "\n".join(
        f"{indent[2:]}- name: {n}\n{indent}mountPath: {p}\n{indent}readOnly: {ro}"
        for n, p, ro in ((n, p, "false" if n in ("work", "shm") else "true") for n, p in mounts)
    )
    volume_yaml = "\n".join(f"        - name: {n}\n          {v}" for n, v in volumes)
    arg_yaml = "\n".join(f"            - {json.dumps(a)}" for a in args)
    return f"""# Site {site.name!r}: its Flower SuperNode on Kubernetes. Create the key Secret
# first, from the private key generated on this site (it never leaves the site's cluster):
#   kubectl create secret generic {name}-key --from-file={PRIVATE_KEY_FILE}=keys/{PRIVATE_KEY_FILE}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}-kit
data:
  ca.crt: |
{ca_block}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      securityContext:  # the image's user; the key Secret is readable by its group
        runAsUser: {CONTAINER_USER}
        runAsGroup: {CONTAINER_USER}
        fsGroup: {CONTAINER_USER}
      containers:
        - name: supernode
          image: {IMAGE}  # docker build -f Dockerfile.worker -t fedvla-worker . (then push)
          command: {json.dumps(SITE_NODE_COMMAND)}
          args:
{arg_yaml}
          env:
            - name: HF_HUB_OFFLINE
              value: "1"
            - name: HF_HOME
              value: {CONTAINER_WORK}/huggingface
          resources:
            limits:
              nvidia.com/gpu: 1
          volumeMounts:
{mount_yaml}
      volumes:
{volume_yaml}
"""


def _readme(settings: Settings, site: Site, camera_map: dict[str, str]) -> str:
    return f"""# Startup kit of site {site.name!r}

The coordinator's SuperLink is at `{settings.superlink_address}` (TLS; `ca.crt` verifies it).
Your node is admitted only with the key pair whose public key the coordinator approved.

1. Install fedvla with its engine on the robot's machine (`bash scripts/bootstrap.sh --extra
   worker` in a clone of the fedvla repository, or build its image from `Dockerfile.worker`).
2. The node's key pair: you generated it before registering, with `fedvla site keygen keys` in
   a folder of this site's own. Unzip this kit in that same folder, so that `keys/` sits beside
   `fedvla-site/` (or set FEDVLA_SITE_KEYS to the folder keygen wrote). `keys/{PRIVATE_KEY_FILE}`
   is private: never send it anywhere. A new key (`fedvla site keygen --force keys`, then its
   public key on your site's page or PATCH /api/v1/sites/{site.id}) sends the site back for
   approval.
3. Check your dataset against the experiment before joining:
   `fedvla site check --dataset /path/to/your/lerobot/dataset --experiment-config
   fedvla-site/kit.json`, with your operator token in FEDVLA_TOKEN: it checks against the
   experiments as the coordinator defines them now (without the token, or when the server is out
   of reach, against this kit's copy, and says so). It prints what it found (dims, joints,
   cameras, fps, episodes) and each mismatch with its fix; it exits non-zero if the dataset
   cannot train in the experiment.
4. Start the node, one of:
   - `sh fedvla-site/supernode.sh`: the exact command line of the node, node config included
     (Flower's SuperNode and fedvla's site trainer, which keeps the policy and dataset loaded
     between rounds). It runs the Python that ran keygen (FEDVLA_PYTHON overrides it), so
     fedvla need not be on PATH; a second node on the same machine needs its own local port,
     FEDVLA_SUPERNODE_PORT (default {SUPERNODE_PORT});
   - `FEDVLA_SITE_UID=$(id -u) FEDVLA_SITE_GID=$(id -g) docker compose up -d` in `fedvla-site/`
     (docker-compose.yml: a GPU, `../keys` or FEDVLA_SITE_KEYS, the dataset and your Hugging Face
     cache mounted, the container running as the owner of the key);
   - `kubectl apply -f kubernetes.yaml` after creating the key Secret (see its header).
5. The dashboard shows your node online within a minute. Training starts when the
   coordinator launches a run; your data never leaves this machine, only model updates do.

Node config: `{node_config(site, camera_map=camera_map)}`.
"""


def current_kit_config(session: Session, settings: Settings, site: Site) -> dict[str, Any]:
    """kit.json as a kit downloaded now would hold it: the experiments the site is in now."""
    return kit_config(session, settings, site, kit_camera_map(session, site))


def build_kit(
    session: Session, settings: Settings, site: Site, api_url: str | None = None
) -> bytes:
    """The zip; Conflict unless the site is approved. ``api_url``: see kit_config."""
    if site.status != SiteStatus.approved:
        raise Conflict(
            f"Site {site.name!r} is {site.status}: a startup kit is for approved sites",
            field="status",
            reason=f"{site.status}, not approved",
        )
    dialable_address(settings)
    tls = ensure_tls(settings.superlink_dir / "tls", server_tls_hosts(settings))
    ca_pem = tls.ca_certificate.read_text()
    cameras = kit_camera_map(session, site)
    files = {
        "README.md": _readme(settings, site, cameras),
        "ca.crt": ca_pem,
        "kit.json": json.dumps(kit_config(session, settings, site, cameras, api_url), indent=2)
        + "\n",
        "supernode.sh": _shell_script(settings, site, cameras),
        "docker-compose.yml": _compose(settings, site, cameras),
        "kubernetes.yaml": _kubernetes(settings, site, ca_pem, cameras),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            info = zipfile.ZipInfo(f"{KIT_ROOT}/{name}")
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            archive.writestr(info, text)
    return buffer.getvalue()
