"""HTML forms <-> the API's request models.

Forms post flat string fields; these functions turn them into the dict that the API's pydantic
models (ExperimentCreate, SiteCreate, ...) validate, and turn the field paths of the API's errors
(``partition.num_clients``) back into the form's field names, so each error shows by its input.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fedvla.core.errors import DomainError, FieldProblem
from fedvla.core.schemas.experiments import ExperimentPublic
from fedvla.core.schemas.sites import SitePublic
from fedvla.web.api.errors import http_status, problems_from_pydantic
from fedvla.web.pages.contexts import FORM_WIDE, FormState
from fedvla.web.pages.experiment_inputs import (
    DATASET_LIST_FIELDS,
    EXPERIMENT_FIELDS,
    PARTITION_FIELDS,
)

SITE_FIELDS = ("name", "organisation", "contact", "robot_type", "dataset", "hardware", "public_key")
SITE_FEATURE_FIELDS = ("state_dim", "action_dim", "fps", "episodes", "frames")
SITE_FEATURE_LISTS = ("state_names", "action_names", "camera_keys", "tasks")


def form_state(
    values: Mapping[str, str], problems: Iterable[FieldProblem], fields: Any
) -> FormState:
    """Entered values, with each API problem placed by the input it is about."""
    errors: dict[str, list[str]] = {}
    for problem in problems:
        errors.setdefault(fields(problem.field), []).append(problem.reason)
    return FormState(values=dict(values), errors=errors)


def form_error(state: FormState, what: str) -> str | None:
    """The alert above a form: errors of no single input, else which inputs to fix."""
    wide = "; ".join(state.errors.get(FORM_WIDE, []))
    if wide or not state.invalid_fields:
        return wide or None
    names = ", ".join(name.replace("_", " ") for name in state.invalid_fields)
    return f"The {what} was not saved: fix {names} (marked below)."


@dataclass(frozen=True)
class Outcome[T]:
    """What a form's save did: the saved row, or the problems and the API's status code."""

    saved: T | None
    problems: list[FieldProblem]
    status_code: int


def attempt[T](save: Callable[[], T]) -> Outcome[T]:
    """Runs a save (validation with the API's models, then the service) and collects its errors,
    so the form can come back with each of them by its field."""
    try:
        return Outcome(save(), [], 200)
    except ValidationError as error:
        return Outcome(None, problems_of(error), 422)
    except DomainError as error:
        problems = error.errors or [FieldProblem(field=FORM_WIDE, reason=error.detail)]
        return Outcome(None, list(problems), http_status(error))


def problems_of(error: ValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(field=p.field, reason=p.reason.removeprefix("Value error, "))
        for p in problems_from_pydantic(error.errors())
    ]


# --------------------------------------------------------------------------- experiments


def _dataset_lines(refs: Iterable[Mapping[str, Any]]) -> str:
    return "\n".join(f"{r['repo_id']} {r['root']}" if r.get("root") else r["repo_id"] for r in refs)


def _parse_dataset_lines(field: str, text: str) -> tuple[list[dict[str, Any]], list[FieldProblem]]:
    """One dataset per line: ``repo_id`` or ``repo_id /local/root``."""
    refs: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        repo_id, _, root = line.partition(" ")
        refs.append({"repo_id": repo_id, "root": root.strip() or None})
    return refs, []


def experiment_values(experiment: ExperimentPublic) -> dict[str, str]:
    """The experiment's fields as a form shows them."""
    data = experiment.model_dump(mode="json")
    values = {name: "" if data[name] is None else str(data[name]) for name in EXPERIMENT_FIELDS}
    for name in DATASET_LIST_FIELDS:
        values[name] = _dataset_lines(data[name])
    partition = data.get("partition") or {}
    for name, path in PARTITION_FIELDS.items():
        value: Any = partition
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values[name] = "" if value is None else str(value)
    values["site_ids"] = ",".join(str(i) for i in data.get("site_ids", []))
    return values


def experiment_request(form: Mapping[str, str], site_ids: list[str]) -> dict[str, Any]:
    """The body the REST API would receive for this form (ExperimentCreate's fields)."""
    body: dict[str, Any] = {name: form.get(name, "") for name in EXPERIMENT_FIELDS}
    for name in DATASET_LIST_FIELDS:
        body[name], _ = _parse_dataset_lines(name, form.get(name, ""))
    if form.get("partition_repo_id", "").strip():
        partition: dict[str, Any] = {"dataset": {}}
        for name, path in PARTITION_FIELDS.items():
            value: Any = form.get(name, "").strip()
            if name == "partition_root" and not value:
                value = None
            target = partition["dataset"] if path[0] == "dataset" else partition
            target[path[-1]] = value
        body["partition"] = partition
    else:
        body["partition"] = None
    body["site_ids"] = site_ids
    return body


def experiment_field(path: str) -> str:
    """The form input an API error path is about."""
    head = path.split(".", 1)[0]
    if head in EXPERIMENT_FIELDS or head in DATASET_LIST_FIELDS or head == "site_ids":
        return head
    if head == "sites":
        return "site_ids"
    if head == "partition":
        rest = tuple(path.split(".")[1:])
        for name, field_path in PARTITION_FIELDS.items():
            if rest[: len(field_path)] == field_path:
                return name
        return "partition_repo_id"
    return FORM_WIDE


# --------------------------------------------------------------------------- sites


def site_values(site: SitePublic) -> dict[str, str]:
    data = site.model_dump(mode="json")
    values = {name: data[name] or "" for name in SITE_FIELDS}
    features = data["features"]
    for name in SITE_FEATURE_FIELDS:
        values[name] = str(features.get(name, ""))
    for name in SITE_FEATURE_LISTS:
        values[name] = ", ".join(features.get(name, []))
    resolutions = features.get("camera_resolutions", {})
    # Stored as LeRobot shapes, [height, width(, channels)]; people write WIDTHxHEIGHT.
    values["camera_resolutions"] = ", ".join(
        f"{key}={shape[1]}x{shape[0]}" for key, shape in resolutions.items() if len(shape) >= 2
    )
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def site_request(form: Mapping[str, str]) -> tuple[dict[str, Any], list[FieldProblem]]:
    """The body the REST API would receive (SiteCreate), and problems the form alone shows."""
    problems: list[FieldProblem] = []
    body: dict[str, Any] = {name: form.get(name, "") for name in SITE_FIELDS}
    body["public_key"] = body["public_key"] or None
    features: dict[str, Any] = {}
    for name in SITE_FEATURE_FIELDS:
        value = form.get(name, "").strip()
        if value or name in ("state_dim", "action_dim", "fps"):
            features[name] = value
    for name in SITE_FEATURE_LISTS:
        features[name] = _names(form.get(name, ""))
    resolutions: dict[str, list[int]] = {}
    for item in _names(form.get("camera_resolutions", "")):
        key, _, size = item.partition("=")
        width, _, height = size.lower().partition("x")
        if not (key.strip() and width.strip().isdigit() and height.strip().isdigit()):
            problems.append(
                FieldProblem(
                    field="features.camera_resolutions",
                    reason=f"{item!r} is not camera=WIDTHxHEIGHT",
                )
            )
            continue
        resolutions[key.strip()] = [int(height), int(width)]
    features["camera_resolutions"] = resolutions
    body["features"] = features
    return body, problems


def site_field(path: str) -> str:
    parts = path.split(".")
    if parts[0] == "features" and len(parts) > 1:
        return parts[1]
    return parts[0] if parts[0] in SITE_FIELDS else FORM_WIDE
