"""The API's experiment schemas and table are derived from the one definition of an experiment
(fedvla.core.experiment_config): a setting added, bounded or renamed there shows up everywhere."""

from typing import Any

from fedvla.core.experiment_config import ExperimentConfig, FederationSettings
from fedvla.core.models import Experiment
from fedvla.core.schemas.experiments import ExperimentCreate, ExperimentPublic, ExperimentUpdate

SETTINGS = set(FederationSettings.model_fields)
_NOT_CONSTRAINTS = {"title", "default", "description", "examples"}


def _constraints(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without its annotations and without the ``null`` an optional adds."""
    kept = {key: value for key, value in schema.items() if key not in _NOT_CONSTRAINTS}
    branches = [branch for branch in kept.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        kept.update(branches[0])
    elif branches:
        kept["anyOf"] = branches
    return kept


def _properties(model: Any) -> dict[str, dict[str, Any]]:
    return model.model_json_schema()["properties"]  # type: ignore[no-any-return]


def test_requests_and_responses_carry_every_setting() -> None:
    assert set(ExperimentCreate.model_fields) == SETTINGS | {"name", "description", "site_ids"}
    assert set(ExperimentUpdate.model_fields) == set(ExperimentCreate.model_fields)
    assert set(ExperimentPublic.model_fields) == SETTINGS | {
        "name", "description", "site_ids", "id", "created_at", "updated_at",
    }  # fmt: skip


def test_each_setting_has_the_definitions_bounds_and_default_in_every_schema() -> None:
    settings = _properties(FederationSettings)
    create = _properties(ExperimentCreate)
    update = _properties(ExperimentUpdate)
    public = _properties(ExperimentPublic)

    for name, schema in settings.items():
        assert create[name] == schema, name
        assert public[name] == schema, name
    for name, schema in create.items():
        assert _constraints(update[name]) == _constraints(schema), name
        assert update[name]["default"] is None, name


def test_the_table_stores_the_settings_as_one_document_and_mode_to_query_by() -> None:
    columns = set(Experiment.__table__.columns.keys())  # type: ignore[attr-defined]

    assert columns == {"id", "name", "description", "config", "mode", "created_at", "updated_at"}
    assert Experiment.model_fields["config"].annotation is ExperimentConfig
    assert set(ExperimentConfig.model_fields) == SETTINGS
