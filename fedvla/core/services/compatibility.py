"""Embodiment compatibility: does a site's robot and dataset fit an experiment?

A deployment experiment's embodiment is that of its reference site: the first approved site
of the experiment by id (the first site of any status when none is approved yet). Every other
site must declare the same state and action dimensions (and joint names, where both declare
them), the same camera keys and fps. A different robot type or camera resolution is a warning:
SmolVLA resizes images, and SO-100 and SO-101 share their joints. The report names each
mismatch and how to fix it, so it is fixed before any GPU time is spent.
"""

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from fedvla.core.errors import FieldProblem
from fedvla.core.experiment_config import Mode
from fedvla.core.models import Experiment, ExperimentSite, Site, SiteFeatures, SiteStatus

CAMERA_PREFIX = "observation.images."


class Mismatch(BaseModel):
    feature: str = Field(examples=["camera_keys"])
    severity: Literal["error", "warning"] = Field(
        description="error: the site cannot train in the experiment; warning: it can."
    )
    found: Any = None
    expected: Any = None
    reason: str = Field(examples=["camera 'observation.images.wrist' is not in the experiment"])
    fix: str = Field(examples=["map it to 'observation.images.cam2'"])


class CompatibilityReport(BaseModel):
    site_id: int
    site_name: str
    experiment_id: int | None = Field(
        description="None: the site's declaration checked on its own (names, resolutions)."
    )
    experiment_name: str | None = None
    reference: str = Field(
        description="Where the expected features come from.",
        examples=["site 'lab-a' (id 1), the experiment's reference site"],
    )
    compatible: bool = Field(description="True when no mismatch is an error.")
    mismatches: list[Mismatch]


def camera_key(key: str) -> str:
    """A camera's full LeRobot feature key ('top' -> 'observation.images.top')."""
    return key if key.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + key


def _resolutions(features: SiteFeatures) -> dict[str, tuple[int, ...]]:
    return {camera_key(k): tuple(v) for k, v in features.camera_resolutions.items()}


def declaration_mismatches(features: SiteFeatures) -> list[Mismatch]:
    """What a declaration contradicts within itself."""
    found: list[Mismatch] = []
    for side, dim, names in (
        ("state", features.state_dim, features.state_names),
        ("action", features.action_dim, features.action_names),
    ):
        if names and len(names) != dim:
            found.append(
                Mismatch(
                    feature=f"{side}_names",
                    severity="error",
                    found=len(names),
                    expected=dim,
                    reason=f"{len(names)} {side} names for a {side} dim of {dim}",
                    fix=f"declare one name per {side} dimension ({dim}), in the dataset's order",
                )
            )
    cameras = {camera_key(k) for k in features.camera_keys}
    for key, resolution in _resolutions(features).items():
        if key not in cameras:
            found.append(
                Mismatch(
                    feature="camera_resolutions",
                    severity="error",
                    found=key,
                    expected=sorted(cameras),
                    reason=f"a resolution for camera {key!r}, which is not in camera_keys",
                    fix=f"add {key!r} to camera_keys or remove its resolution",
                )
            )
        if len(resolution) not in (2, 3) or min(resolution, default=0) < 1:
            found.append(
                Mismatch(
                    feature="camera_resolutions",
                    severity="error",
                    found=list(resolution),
                    expected="[height, width] or [height, width, channels]",
                    reason=f"camera {key!r} has resolution {list(resolution)}",
                    fix="give the camera's height and width in pixels",
                )
            )
    return found


def camera_mapping(site: SiteFeatures, expected: SiteFeatures) -> dict[str, str]:
    """Each site camera the experiment lacks -> the experiment camera it stands for: one the
    site lacks, of the same resolution when resolutions are declared (first such in order)."""
    ours = [camera_key(k) for k in site.camera_keys]
    theirs = [camera_key(k) for k in expected.camera_keys]
    our_res, their_res = _resolutions(site), _resolutions(expected)
    unfilled = [k for k in theirs if k not in ours]
    mapping: dict[str, str] = {}
    for key in [k for k in ours if k not in theirs]:
        same_size = [k for k in unfilled if our_res.get(key) and their_res.get(k) == our_res[key]]
        candidates = same_size or unfilled
        if candidates:
            mapping[key] = candidates[0]
            unfilled.remove(candidates[0])
    return mapping


def _camera_mismatches(site: SiteFeatures, expected: SiteFeatures) -> list[Mismatch]:
    ours = [camera_key(k) for k in site.camera_keys]
    theirs = [camera_key(k) for k in expected.camera_keys]
    our_res, their_res = _resolutions(site), _resolutions(expected)
    mapping = camera_mapping(site, expected)
    found: list[Mismatch] = []
    for key in [k for k in ours if k not in theirs]:
        target = mapping.get(key)
        found.append(
            Mismatch(
                feature="camera_keys",
                severity="error" if target is None else "warning",
                found=key,
                expected=theirs,
                reason=f"camera {key!r} is not in the experiment",
                fix="drop this camera from the dataset, or record without it"
                if target is None
                else f"map it to {target!r} (the startup kit's node config does: camera-map)",
            )
        )
    for key in [k for k in theirs if k not in ours and k not in mapping.values()]:
        found.append(
            Mismatch(
                feature="camera_keys",
                severity="error",
                found=ours,
                expected=key,
                reason=f"the experiment's camera {key!r} is missing",
                fix=f"record {key!r} (resolution {list(their_res.get(key, ())) or 'any'}) "
                "or map one of your cameras to it",
            )
        )
    for key in set(ours) & set(theirs):
        if key in our_res and key in their_res and our_res[key] != their_res[key]:
            found.append(
                Mismatch(
                    feature="camera_resolutions",
                    severity="warning",
                    found=list(our_res[key]),
                    expected=list(their_res[key]),
                    reason=f"camera {key!r} is {list(our_res[key])}, "
                    f"the experiment's is {list(their_res[key])}",
                    fix="fine for SmolVLA (it resizes); record at the experiment's resolution "
                    "for the best transfer",
                )
            )
    return found


def compare(
    site: SiteFeatures, robot: str, expected: SiteFeatures, expected_robot: str
) -> list[Mismatch]:
    """How a site's declaration differs from the experiment's embodiment."""
    found: list[Mismatch] = []
    for side in ("state", "action"):
        dim, want = getattr(site, f"{side}_dim"), getattr(expected, f"{side}_dim")
        names, want_names = getattr(site, f"{side}_names"), getattr(expected, f"{side}_names")
        if dim != want:
            found.append(
                Mismatch(
                    feature=f"{side}_dim",
                    severity="error",
                    found=dim,
                    expected=want,
                    reason=f"{side} has {dim} dimensions, the experiment's has {want}",
                    fix=f"record {side}s with the experiment's {want} joints"
                    + (f" ({', '.join(want_names)})" if want_names else ""),
                )
            )
            continue
        if names and want_names and list(names) != list(want_names):
            reordered = sorted(names) == sorted(want_names)
            found.append(
                Mismatch(
                    feature=f"{side}_names",
                    severity="error",
                    found=names,
                    expected=want_names,
                    reason=f"{side} joints are {'in another order' if reordered else 'different'}",
                    fix=f"reorder the dataset's {side} vector as {want_names}"
                    if reordered
                    else f"use the experiment's joints {want_names}",
                )
            )
    found += _camera_mismatches(site, expected)
    if site.fps != expected.fps:
        found.append(
            Mismatch(
                feature="fps",
                severity="error",
                found=site.fps,
                expected=expected.fps,
                reason=f"recorded at {site.fps} fps, the experiment at {expected.fps} fps",
                fix=f"record (or resample the dataset) at {expected.fps} fps: action chunks "
                "span a fixed number of frames",
            )
        )
    if robot != expected_robot:
        found.append(
            Mismatch(
                feature="robot_type",
                severity="warning",
                found=robot,
                expected=expected_robot,
                reason=f"robot {robot}, the experiment's is {expected_robot}",
                fix="fine if the joints and cameras match; check the joint calibration agrees",
            )
        )
    return found


def _features(site: Site) -> SiteFeatures:
    return SiteFeatures.model_validate(site.features)


def _sites_of(session: Session, experiment_id: int) -> list[Site]:
    query = (
        select(Site)
        .join(ExperimentSite, col(ExperimentSite.site_id) == col(Site.id))
        .where(ExperimentSite.experiment_id == experiment_id)
        .order_by(col(Site.id))
    )
    return list(session.exec(query))


def reference_site(sites: Sequence[Site]) -> Site | None:
    """The site whose embodiment the experiment expects."""
    ordered = sorted(sites, key=lambda s: s.id or 0)
    approved = [s for s in ordered if s.status == SiteStatus.approved]
    chosen = approved or ordered
    return chosen[0] if chosen else None


def cameras_renamed_for(site: Site, sites: Sequence[Site]) -> dict[str, str] | None:
    """The site's cameras renamed to the reference site's of the experiment of ``sites`` ({} if
    they agree); None when the site is that reference itself, or there is none."""
    reference = reference_site(sites)
    if reference is None or reference.id == site.id:
        return None
    return camera_mapping(
        SiteFeatures.model_validate(site.features),
        SiteFeatures.model_validate(reference.features),
    )


def _report(
    site: Site, experiment: Experiment | None, reference: str, mismatches: list[Mismatch]
) -> CompatibilityReport:
    assert site.id is not None
    return CompatibilityReport(
        site_id=site.id,
        site_name=site.name,
        experiment_id=experiment.id if experiment else None,
        experiment_name=experiment.name if experiment else None,
        reference=reference,
        compatible=not any(m.severity == "error" for m in mismatches),
        mismatches=mismatches,
    )


def check_declaration(site: Site) -> CompatibilityReport:
    return _report(
        site, None, "the site's own declaration", declaration_mismatches(_features(site))
    )


def check_against(
    *, site: Site, experiment: Experiment, sites: Sequence[Site]
) -> CompatibilityReport:
    """The site against the experiment whose sites are ``sites``."""
    own = declaration_mismatches(_features(site))
    if experiment.mode != Mode.deployment:
        return _report(
            site, experiment, "a simulation experiment: datasets are checked at launch", own
        )
    reference = reference_site(sites)
    if reference is None or reference.id == site.id:
        return _report(site, experiment, "this site defines the experiment's embodiment", own)
    source = f"site {reference.name!r} (id {reference.id}), the experiment's reference site"
    mismatches = own + compare(
        _features(site), site.robot_type, _features(reference), reference.robot_type
    )
    return _report(site, experiment, source, mismatches)


def check_site_for_experiment(
    *, session: Session, site: Site, experiment: Experiment
) -> CompatibilityReport:
    assert experiment.id is not None
    return check_against(site=site, experiment=experiment, sites=_sites_of(session, experiment.id))


def reports_for_site(*, session: Session, site: Site) -> list[CompatibilityReport]:
    """The declaration on its own, then the site against each deployment experiment it is in."""
    experiments = session.exec(
        select(Experiment)
        .join(ExperimentSite, col(ExperimentSite.experiment_id) == col(Experiment.id))
        .where(ExperimentSite.site_id == site.id, Experiment.mode == Mode.deployment)
        .order_by(col(Experiment.id))
    )
    return [check_declaration(site)] + [
        check_site_for_experiment(session=session, site=site, experiment=experiment)
        for experiment in experiments
    ]


def launch_problems(experiment: Experiment, sites: Sequence[Site]) -> list[FieldProblem]:
    """Each error of each site against the experiment, as the launch's 409 reasons."""
    problems: list[FieldProblem] = []
    for site in sites:
        report = check_against(site=site, experiment=experiment, sites=sites)
        problems += [
            FieldProblem(
                field=f"sites.{site.id}.features.{m.feature}",
                reason=f"site {site.name!r}: {m.reason}; fix: {m.fix}",
            )
            for m in report.mismatches
            if m.severity == "error"
        ]
    return problems
