"""What crosses the wire: trainable weights (optionally in reduced precision) and statistics."""

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

BFLOAT16_AS = np.uint16
"""numpy has no bfloat16: its bits travel as uint16 and are viewed back on arrival."""


def encode_arrays(state: dict[str, torch.Tensor], dtype: str) -> ArrayRecord:
    """Float tensors in the transport dtype, as an ArrayRecord."""
    arrays: OrderedDict[str, Array] = OrderedDict()
    for key, tensor in state.items():
        value = tensor.detach().cpu()
        if dtype == "bfloat16":
            bits = value.to(torch.bfloat16).view(torch.int16).numpy().view(BFLOAT16_AS)
            arrays[key] = Array(bits)
        else:
            arrays[key] = Array(value.to(getattr(torch, dtype)).numpy())
    return ArrayRecord(arrays)


def decode_arrays(record: ArrayRecord, dtype: str) -> dict[str, torch.Tensor]:
    """Float32 tensors back from an ArrayRecord sent in the transport dtype."""
    state: dict[str, torch.Tensor] = {}
    for key, array in record.items():
        values = array.numpy()
        if dtype == "bfloat16":
            bits = torch.from_numpy(values.view(np.int16).copy())
            state[key] = bits.view(torch.bfloat16).to(torch.float32)
        else:
            state[key] = torch.from_numpy(values.astype(np.float32, copy=True))
    return state


def to_float32_record(record: ArrayRecord, dtype: str) -> ArrayRecord:
    if dtype == "float32":
        return record
    return ArrayRecord(
        OrderedDict((k, Array(v.numpy())) for k, v in decode_arrays(record, dtype).items())
    )


def stats_to_record(stats: dict[str, dict[str, np.ndarray]]) -> ArrayRecord:
    """Normalisation statistics as `feature|stat` arrays."""
    return ArrayRecord(
        OrderedDict(
            (f"{feature}|{name}", Array(np.asarray(value, dtype=np.float64)))
            for feature, values in stats.items()
            for name, value in values.items()
        )
    )


def stats_from_record(record: ArrayRecord) -> dict[str, dict[str, np.ndarray]]:
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, array in record.items():
        feature, name = key.split("|", 1)
        stats.setdefault(feature, {})[name] = array.numpy()
    return stats


def as_int(value: object) -> int:
    """A scalar from a Config/MetricRecord as int (records type their values loosely)."""
    if isinstance(value, int | float | str):
        return int(value)
    raise TypeError(f"expected a number, got {value!r}")


def as_float(value: object) -> float:
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError(f"expected a number, got {value!r}")
