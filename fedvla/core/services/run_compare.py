"""Runs side by side: the settings each ran with (its frozen FederationConfig), one row per
setting, nested settings as dotted names, and whether the runs differ in it."""

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MISSING = "\u2013"  # the run has no such setting (an older config)


@dataclass(frozen=True)
class SettingRow:
    name: str
    values: list[str]
    differs: bool


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"partition": {"num_clients": 2}}`` -> ``("partition.num_clients", 2)``; an empty
    mapping or None stays one value."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def settings_diff(configs: Sequence[Mapping[str, Any]]) -> list[SettingRow]:
    """Every setting any of the runs has, in the first run's order, with each run's value."""
    flat = [dict(flatten(config)) for config in configs]
    names = list(dict.fromkeys(name for settings in flat for name in settings))
    rows = []
    for name in names:
        values = [shown(settings[name]) if name in settings else MISSING for settings in flat]
        rows.append(SettingRow(name=name, values=values, differs=len(set(values)) > 1))
    return rows
