"""A migrated database with an admin token and one experiment: where the system benches start."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.migrate import upgrade_database
from fedvla.core.models import Role
from fedvla.core.schemas.experiments import ExperimentCreate
from fedvla.core.services import experiments, tokens


@dataclass(frozen=True)
class Seeded:
    engine: Engine
    headers: dict[str, str]
    """An admin's bearer token, for the REST API."""
    experiment_id: int


def seed_database(settings: Settings, experiment_fields: dict[str, Any]) -> Seeded:
    """Migrates ``settings.database_url`` and creates an admin token and one experiment."""
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        _, secret = tokens.create_token(session=session, name="bench", role=Role.admin)
        experiment = experiments.create_experiment(
            session=session, data=ExperimentCreate.model_validate(experiment_fields)
        )
        assert experiment.id is not None
        return Seeded(engine, {"Authorization": f"Bearer {secret}"}, experiment.id)
