"""Experiments: definitions that are also valid federations, and who may read them."""

import re
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, func, select

from fedvla.core.config import Settings
from fedvla.core.errors import (
    Conflict,
    FieldProblem,
    Forbidden,
    InvalidFields,
    NotFound,
    reject_nul_characters,
)
from fedvla.core.experiment_config import ExperimentConfig, FederationConfig
from fedvla.core.models import (
    ApiToken,
    Experiment,
    ExperimentSite,
    Role,
    Run,
    RunStatus,
    Site,
    utcnow,
)
from fedvla.core.schemas.experiments import ExperimentCreate, ExperimentPublic, ExperimentUpdate
from fedvla.core.services import preflight, run_files

_NOT_FEDERATION_FIELDS = {"name", "description"}
_WORD = re.compile(r"[a-z_]+")


def _problems(error: ValidationError) -> list[FieldProblem]:
    """Field problems; an error about the whole config is attributed to the first field it names."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        if not field:
            named = [w for w in _WORD.findall(item["msg"]) if w in FederationConfig.model_fields]
            field = named[0] if named else "body"
        reason = item["msg"].removeprefix("Value error, ")
        problems.append(FieldProblem(field=field, reason=reason))
    return problems


def federation_config(definition: dict[str, Any]) -> FederationConfig:
    """The federation an experiment definition describes; InvalidFields (422) if it cannot run."""
    fields = {k: v for k, v in definition.items() if k not in _NOT_FEDERATION_FIELDS}
    try:
        config = FederationConfig(**fields)
    except ValidationError as error:
        raise InvalidFields(_problems(error)) from None
    if config.mode == "deployment" and config.num_clients < config.min_clients:
        raise InvalidFields.one(
            "site_ids",
            f"min_clients ({config.min_clients}) exceeds the {config.num_clients} sites",
        )
    if config.mode == "simulation" and config.site_ids:
        raise InvalidFields.one("site_ids", "sites take part only in deployment mode")
    return config


def site_ids_of(*, session: Session, experiment_id: int) -> list[int]:
    query = select(ExperimentSite.site_id).where(ExperimentSite.experiment_id == experiment_id)
    return sorted(session.exec(query))


def config_of(*, session: Session, experiment: Experiment) -> FederationConfig:
    """The experiment as it would run now: what a launch freezes into Run.config."""
    assert experiment.id is not None
    definition = experiment.config.model_dump(mode="json")
    definition["site_ids"] = site_ids_of(session=session, experiment_id=experiment.id)
    return federation_config(definition)


def to_public(*, session: Session, experiment: Experiment) -> ExperimentPublic:
    assert experiment.id is not None
    return ExperimentPublic.model_validate(
        {
            **experiment.config.model_dump(),
            "id": experiment.id,
            "name": experiment.name,
            "description": experiment.description,
            "site_ids": site_ids_of(session=session, experiment_id=experiment.id),
            "created_at": experiment.created_at,
            "updated_at": experiment.updated_at,
        }
    )


def _columns(data: ExperimentCreate, config: FederationConfig) -> dict[str, Any]:
    """The Experiment columns a valid definition sets: the settings as one document, and the
    columns that queries filter on, copied from it."""
    settings = ExperimentConfig.model_validate(
        config.model_dump(include=set(ExperimentConfig.model_fields))
    )
    return {
        "name": data.name,
        "description": data.description,
        "config": settings,
        "mode": settings.mode,
    }


def _check_sites(*, session: Session, site_ids: list[int]) -> None:
    if len(set(site_ids)) != len(site_ids):
        raise InvalidFields.one("site_ids", "a site is listed more than once")
    if not site_ids:
        return
    found = set(session.exec(select(Site.id).where(col(Site.id).in_(site_ids))))
    missing = [site_id for site_id in site_ids if site_id not in found]
    if missing:
        raise InvalidFields.one("site_ids", f"no site with id {', '.join(map(str, missing))}")


def _definition(data: ExperimentCreate) -> dict[str, Any]:
    definition = data.model_dump(mode="json")
    reject_nul_characters(definition)
    return definition


def _save(*, session: Session, experiment: Experiment, site_ids: list[int] | None) -> Experiment:
    session.add(experiment)
    try:
        session.flush()
        assert experiment.id is not None
        if site_ids is not None:
            session.exec(
                delete(ExperimentSite).where(col(ExperimentSite.experiment_id) == experiment.id)
            )
            for site_id in site_ids:
                session.add(ExperimentSite(experiment_id=experiment.id, site_id=site_id))
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"An experiment named '{experiment.name}' already exists",
            field="name",
            reason="already in use",
        ) from None
    session.refresh(experiment)
    return experiment


def _refuse_duplicate_name(*, session: Session, name: str, own_id: int | None = None) -> None:
    query = select(Experiment.id).where(Experiment.name == name)
    existing = session.exec(query).first()
    if existing is not None and existing != own_id:
        raise Conflict(
            f"An experiment named '{name}' already exists", field="name", reason="already in use"
        )


def _runnable_config(definition: dict[str, Any]) -> FederationConfig:
    """The federation, if its policy and data can be found and fit it; else InvalidFields."""
    config = federation_config(definition)
    problems = preflight.problems(config)
    if problems:
        raise InvalidFields(problems)
    return config


def create_experiment(*, session: Session, data: ExperimentCreate) -> Experiment:
    config = _runnable_config(_definition(data))
    _check_sites(session=session, site_ids=data.site_ids)
    _refuse_duplicate_name(session=session, name=data.name)
    experiment = Experiment(**_columns(data, config))
    return _save(session=session, experiment=experiment, site_ids=data.site_ids)


def update_experiment(
    *, session: Session, experiment: Experiment, data: ExperimentUpdate
) -> Experiment:
    """Applies the changes if the whole result is still a valid experiment; else changes nothing."""
    assert experiment.id is not None
    current = to_public(session=session, experiment=experiment).model_dump(
        mode="json", exclude={"id", "created_at", "updated_at", "evaluation"}
    )
    changes = data.model_dump(mode="json", exclude_unset=True)
    try:
        merged = ExperimentCreate.model_validate({**current, **changes})
    except ValidationError as error:
        raise InvalidFields(_problems(error)) from None
    config = _runnable_config(_definition(merged))
    _check_sites(session=session, site_ids=merged.site_ids)
    _refuse_duplicate_name(session=session, name=merged.name, own_id=experiment.id)
    for field, value in _columns(merged, config).items():
        setattr(experiment, field, value)
    experiment.updated_at = utcnow()
    return _save(
        session=session,
        experiment=experiment,
        site_ids=merged.site_ids if "site_ids" in changes else None,
    )


def get_experiment(*, session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound("Experiment")
    return experiment


def can_read(*, session: Session, token: ApiToken, experiment_id: int) -> bool:
    """Admins and viewers read every experiment; an operator those its site takes part in."""
    if token.role != Role.operator:
        return True
    if token.site_id is None:
        return False
    link = session.get(ExperimentSite, (experiment_id, token.site_id))
    return link is not None


def get_readable_experiment(*, session: Session, token: ApiToken, experiment_id: int) -> Experiment:
    """The experiment, 404 if unknown, 403 if this operator's site does not take part in it."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    if not can_read(session=session, token=token, experiment_id=experiment_id):
        raise Forbidden("This site does not take part in the experiment")
    return experiment


def list_experiments(
    *, session: Session, token: ApiToken, offset: int = 0, limit: int = 50
) -> tuple[list[Experiment], int]:
    query = select(Experiment)
    if token.role == Role.operator:
        query = query.join(ExperimentSite).where(ExperimentSite.site_id == token.site_id)
    count = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Experiment.id).desc()).offset(offset).limit(limit))
    return list(rows), count


def delete_experiment(*, session: Session, settings: Settings, experiment: Experiment) -> None:
    """Deletes the experiment with its runs, their rows and their files (checkpoints, logs);
    refused while one of them is queued or running.

    The rows go first: files left behind by a crash in between sit in folders no later run can
    use (run_files), and no row ever points at files that are gone.
    """
    active = select(Run.id).where(
        Run.experiment_id == experiment.id,
        col(Run.status).in_([RunStatus.queued, RunStatus.running]),
    )
    if session.exec(active).first() is not None:
        raise Conflict("Experiment has a queued or running run; cancel it first")
    keys = session.exec(select(Run.storage_key).where(Run.experiment_id == experiment.id)).all()
    session.delete(experiment)
    session.commit()
    run_files.remove_run_dirs(settings, keys)
