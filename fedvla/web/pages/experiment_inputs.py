"""The experiment form's inputs, derived from the experiment's settings
(fedvla.core.experiment_config): which fields it has, their defaults, the choices of each select and
the bounds each number input carries."""

from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic.fields import FieldInfo

from fedvla.core.experiment_config import FederationSettings, Partition, choices_of, scalar_fields
from fedvla.core.schemas.experiments import ExperimentCreate

SETTINGS_FIELDS = scalar_fields(FederationSettings)
EXPERIMENT_FIELDS = ("name", "description", *SETTINGS_FIELDS)
"""Inputs that carry one field of ExperimentCreate each, under its name."""

PARTITION_FIELDS = {
    "partition_repo_id": ("dataset", "repo_id"),
    "partition_root": ("dataset", "root"),
    "partition_num_clients": ("num_clients",),
    "partition_scheme": ("scheme",),
    "partition_holdout_episodes": ("holdout_episodes",),
}
"""Inputs for the partition's fields, by their path in Partition."""

DATASET_LIST_FIELDS = ("client_datasets", "eval_datasets")


def _field(name: str) -> FieldInfo:
    """The model field that an input of the form edits."""
    if name in PARTITION_FIELDS:
        model: Any = Partition
        for key in PARTITION_FIELDS[name][:-1]:
            model = model.model_fields[key].annotation
        return model.model_fields[PARTITION_FIELDS[name][-1]]
    return ExperimentCreate.model_fields[name]


def _choices() -> dict[str, list[str]]:
    names = (*EXPERIMENT_FIELDS, *PARTITION_FIELDS)
    found = {name: choices_of(_field(name).annotation) for name in names}
    return {name: choices for name, choices in found.items() if choices is not None}


CHOICES = _choices()
"""The options of each select."""


def _bound_attributes(field: FieldInfo) -> str:
    """``min``, ``max`` and ``step`` from a number's bounds, ``maxlength`` from a text's. HTML's
    bounds are inclusive, so an exclusive one (gt=0) shows as its limit; the server's validation
    is the exact one."""
    attributes = []
    for bound in field.metadata:
        if isinstance(bound, Ge | Gt):
            attributes.append(f'min="{bound.ge if isinstance(bound, Ge) else bound.gt}"')
        elif isinstance(bound, Le | Lt):
            attributes.append(f'max="{bound.le if isinstance(bound, Le) else bound.lt}"')
        elif isinstance(bound, MaxLen):
            attributes.append(f'maxlength="{bound.max_length}"')
    if field.annotation is float:
        attributes.append('step="any"')
    return " ".join(attributes)


BOUNDS = {
    name: _bound_attributes(_field(name))
    for name in (*EXPERIMENT_FIELDS, *PARTITION_FIELDS)
    if _field(name).annotation in (int, float, str)
}
"""The bound attributes of each number and text input, by its name."""


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    return "" if value is None else str(getattr(value, "value", value))


def defaults() -> dict[str, str]:
    """A new experiment's form: ExperimentCreate's defaults, and a partition into as many
    clients as the minimum."""
    values = {
        name: _default(_field(name))
        for name in (*EXPERIMENT_FIELDS, *PARTITION_FIELDS)
        if name != "partition_num_clients"
    }
    values["partition_num_clients"] = values["min_clients"]
    values.update(client_datasets="", eval_datasets="", site_ids="")
    return values
