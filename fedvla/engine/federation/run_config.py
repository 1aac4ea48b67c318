"""FederationConfig to and from Flower's run config ([tool.flwr.app.config], kebab-case).

Every field of FederationConfig is a key, its name in kebab-case; a run config holds only
scalars, so fields of any other type (datasets, the partition, site ids, the resume point) travel
as JSON strings. tests/engine/test_run_config.py checks pyproject's table against these keys.
"""

import json
from typing import Any

from fedvla.core.experiment_config import FederationConfig, scalar_fields

ENGINE_KEYS = ("output-dir", "data-dir")
"""Run config keys that are not experiment fields."""


STRUCTURED = tuple(
    name for name in FederationConfig.model_fields if name not in scalar_fields(FederationConfig)
)
"""Fields that travel as JSON strings."""


def kebab(name: str) -> str:
    return name.replace("_", "-")


def run_config_from_federation_config(config: FederationConfig) -> dict[str, Any]:
    dumped = config.model_dump(mode="json")
    return {
        kebab(k): json.dumps(v) if k in STRUCTURED else v
        for k, v in dumped.items()
        if v is not None or k in STRUCTURED
    }


def federation_config_from_run_config(run_config: dict[str, Any]) -> FederationConfig:
    """The config a run config describes; a key left out, or a structured one that is empty or
    ``null``, takes the field's default."""
    fields = {}
    for name in FederationConfig.model_fields:
        key = kebab(name)
        if key not in run_config:
            continue
        value = run_config[key]
        if name in STRUCTURED:
            value = json.loads(value) if isinstance(value, str) and value else None
            if value is None:
                continue
        fields[name] = value
    return FederationConfig.model_validate(fields)
