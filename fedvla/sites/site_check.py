"""``fedvla site check``: a site's local dataset against the experiment, before it joins.

Reads the dataset's metadata (meta/info.json and the rest of meta/) offline with
fedvla.engine.data.features (the same reading the ClientApp does), turns it into the features a site
declares: the body of its registration, or compared with each experiment of the startup kit's
kit.json (fedvla.core.services.compatibility: the same rules as the server's).
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvla.core.experiment_config import DatasetRef
from fedvla.core.models import SiteFeatures
from fedvla.core.services.compatibility import Mismatch, camera_key, compare
from fedvla.engine.data.features import (
    ACTION_KEY,
    STATE_KEY,
    DatasetError,
    features_of,
    open_metadata,
)

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata


class KitError(ValueError):
    """kit.json is missing or not a startup kit's."""


@dataclass
class CheckResult:
    found: SiteFeatures
    robot_type: str
    against: list[tuple[str, list[Mismatch]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(m.severity == "error" for _, found in self.against for m in found)


def _names(feature: dict[str, Any]) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # {"motors": [...]} in older LeRobot datasets
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) else []


def found_features(meta: "LeRobotDatasetMetadata", ref: DatasetRef) -> SiteFeatures:
    """The dataset's features, as a site declares them."""
    basic = features_of(meta, ref, owner="this site")
    features = meta.features
    resolutions = {
        camera_key(key): [int(v) for v in features[key]["shape"]] for key in meta.camera_keys
    }
    tasks = list(meta.tasks.index) if getattr(meta, "tasks", None) is not None else []
    return SiteFeatures(
        state_dim=basic.state_dim,
        action_dim=basic.action_dim,
        state_names=_names(features[STATE_KEY]),
        action_names=_names(features[ACTION_KEY]),
        camera_keys=list(basic.cameras),
        camera_resolutions=resolutions,
        fps=basic.fps,
        episodes=int(meta.total_episodes),
        frames=int(meta.total_frames),
        tasks=[str(t) for t in tasks],
    )


def read_kit(path: Path) -> dict[str, Any]:
    try:
        kit = json.loads(path.read_text())
    except OSError as error:
        raise KitError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise KitError(f"{path} is not JSON: {error}") from None
    if not isinstance(kit, dict) or "site" not in kit or "experiments" not in kit:
        raise KitError(f"{path} is not a startup kit's kit.json (no 'site' or 'experiments')")
    return kit


KIT_CONFIG_PATH = "/sites/{site_id}/startup-kit/config"
"""Under the kit's ``api``: kit.json as a kit downloaded now would hold it (the site's token)."""
FETCH_TIMEOUT_S = 15.0


def current_kit(
    kit: dict[str, Any], token: str | None, timeout_s: float = FETCH_TIMEOUT_S
) -> tuple[dict[str, Any], str]:
    """The kit's experiments as the server defines them now, read with the site's operator
    token from the API the kit names; the kit's own copy (frozen when it was downloaded) when
    that cannot be read. With a line saying which it is and, for the copy, why."""
    api = kit.get("api")
    site_id = kit["site"].get("id")
    frozen = "Note: checking against the experiments as they were when this kit was downloaded"
    if not isinstance(api, str) or not api or site_id is None:
        return kit, f"{frozen}: kit.json names no server API (download the kit again)."
    url = api.rstrip("/") + KIT_CONFIG_PATH.format(site_id=site_id)
    if not token:
        return kit, (
            f"{frozen}: no token to read them now from {url} (set FEDVLA_TOKEN to the "
            "site's operator token, or pass --token)."
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return kit, f"{frozen}: {url} is not HTTPS; your token is not sent over plain HTTP."
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            fresh = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return kit, f"{frozen}: {url} answered {error.code} {_detail(error)}."
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        return kit, f"{frozen}: cannot read them now from {url}: {reason}."
    if not isinstance(fresh, dict) or "site" not in fresh or "experiments" not in fresh:
        return kit, f"{frozen}: {url} did not answer a kit's configuration."
    return fresh, f"Checking against the experiments as the server defines them now ({url})."


def _detail(error: "urllib.error.HTTPError") -> str:
    try:
        return str(json.loads(error.read()).get("detail", "")) or str(error.reason)
    except (OSError, ValueError, AttributeError):
        return str(error.reason)


def read_dataset(dataset: Path) -> tuple["LeRobotDatasetMetadata", SiteFeatures]:
    """The dataset's metadata and its features; DatasetError saying what is wrong with it."""
    info = dataset / "meta" / "info.json"
    if not dataset.is_dir():
        raise DatasetError(f"dataset folder {dataset} is missing (no such folder)")
    if not info.is_file():
        raise DatasetError(f"{dataset} is not a LeRobot dataset: it has no meta/info.json")
    try:
        json.loads(info.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{info} is unreadable or not JSON: {error}") from None
    ref = DatasetRef(repo_id=f"local/{dataset.name}", root=str(dataset))
    meta = open_metadata(ref, owner="this site")
    return meta, found_features(meta, ref)


def registration_body(
    dataset: Path,
    *,
    name: str | None = None,
    public_key: str | None = None,
    hardware: str = "",
    robot_type: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /api/v1/sites`` for this dataset: its features as it holds them.

    The name defaults to the folder's, the robot type to the dataset's (so100_follower: so100;
    ``other`` if it is not one fedvla knows). A pydantic ValidationError names an invalid field.
    """
    from fedvla.core.models import RobotType
    from fedvla.core.schemas.sites import SiteCreate

    meta, found = read_dataset(dataset)
    recorded = str(meta.robot_type or "")  # lerobot's names: so100_follower, so101_leader...
    known = next((r.value for r in RobotType if recorded.split("_")[0] == r.value), "other")
    body = SiteCreate.model_validate(
        {
            "name": name or dataset.resolve().name,
            "robot_type": robot_type or known,
            "dataset": str(dataset.resolve()),
            "features": found.model_dump(mode="json"),
            "hardware": hardware,
            "public_key": public_key,
        }
    )
    return body.model_dump(mode="json", exclude_none=True)


def check_site_dataset(dataset: Path, kit: dict[str, Any]) -> CheckResult:
    """What the dataset at ``dataset`` holds, and its mismatches with each experiment of the kit
    and with what the site declared at registration (what the server's checks relied on)."""
    meta, found = read_dataset(dataset)
    robot = str(kit["site"].get("robot_type") or meta.robot_type or "other")
    result = CheckResult(found=found, robot_type=robot)
    targets = [
        (
            f"experiment {e['name']!r} (reference site {e['reference_site']!r})",
            e["features"],
            e["robot_type"],
        )
        for e in kit["experiments"]
    ] + [("the site's registered declaration", kit["site"]["features"], robot)]
    for label, expected, expected_robot in targets:
        try:
            expected_features = SiteFeatures.model_validate(expected)
        except ValueError as error:
            raise KitError(f"kit.json: features of {label} are invalid: {error}") from None
        result.against.append(
            (label, compare(found, robot, expected_features, str(expected_robot)))
        )
    return result


def describe(result: CheckResult) -> str:
    """The report ``fedvla site check`` prints."""
    f = result.found
    lines = [
        "Found:",
        f"  state: {f.state_dim} dims {f.state_names or ''}".rstrip(),
        f"  action: {f.action_dim} dims {f.action_names or ''}".rstrip(),
        "  cameras: "
        + (", ".join(f"{k} {f.camera_resolutions.get(k, [])}" for k in f.camera_keys) or "none"),
        f"  fps: {f.fps}; episodes: {f.episodes}; frames: {f.frames}; tasks: {len(f.tasks)}",
    ]
    for label, mismatches in result.against:
        errors = [m for m in mismatches if m.severity == "error"]
        lines.append(f"Against {label}: {'FAIL' if errors else 'OK'}")
        for m in mismatches:
            lines.append(f"  [{m.severity}] {m.feature}: {m.reason}; fix: {m.fix}")
    return "\n".join(lines)


__all__ = [
    "CheckResult",
    "DatasetError",
    "KitError",
    "check_site_dataset",
    "current_kit",
    "describe",
    "read_kit",
    "registration_body",
]
