"""FederationConfig to and from Flower's run config ([tool.flwr.app.config], kebab-case).

Scalar fields keep their names in kebab-case; structured ones (datasets, the partition,
resume point, site ids) travel as JSON strings, since a run config holds only scalars.
"""

import json
from typing import Any

from worker.federation.config import FederationConfig

STRUCTURED = ("client_datasets", "partition", "eval_datasets", "site_ids", "resume_from")
ENGINE_KEYS = ("output-dir", "data-dir")
"""Run config keys that are not experiment fields."""


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
    fields = {}
    for name in FederationConfig.model_fields:
        key = kebab(name)
        if key not in run_config:
            continue
        value = run_config[key]
        if name in STRUCTURED:
            value = json.loads(value) if isinstance(value, str) and value else None
            if value is None and name in ("client_datasets", "eval_datasets", "site_ids"):
                value = []
        fields[name] = value
    return FederationConfig.model_validate(fields)
