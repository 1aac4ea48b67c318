"""Weighted average of client ArrayRecords in one streaming pass over their bytes.

Flower's aggregate_arrayrecords deserialises each client's arrays (a copy), scales them (another
array) and adds them into the result, so a round of N updates moves several times the input
through memory. Here each client's array is read in place from the bytes it arrived in, and the
result is built a cache-sized block at a time (every client's block added while the block's sum
stays in cache), so memory sees each input byte once and the result once.
The sum runs over the records in the order given, so the same inputs give the same bits.
"""

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvla.engine.federation.transport import (
    LayoutError,
    PackedArrays,
    array_values,
    split_values,
    to_array,
)

BLOCK_ELEMENTS = 1 << 16
"""Elements summed per block: the block's sum and one scaled input (256 KiB each in float32)."""


class AggregationError(ValueError):
    """Client updates that cannot be averaged together (different keys, shapes or dtypes)."""


def weighted_average(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """sum(w_i * record_i) / sum(w_i), key by key, in the records' dtype (float32 stays float32)."""
    if not records or len(records) != len(weights):
        raise AggregationError(f"{len(records)} records for {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise AggregationError(f"weights sum to {total}; nothing to average")
    factors = [float(w) / total for w in weights]
    keys = list(records[0].keys())
    for index, record in enumerate(records[1:], start=1):
        if list(record.keys()) != keys:
            raise AggregationError(f"update {index} has other arrays than update 0")
    result = ArrayRecord()
    for key in keys:
        inputs = [_values(record[key], key) for record in records]
        result[key] = _average(key, inputs, factors)
    return result


def weighted_average_packed(
    updates: Sequence[PackedArrays], weights: Sequence[float]
) -> ArrayRecord:
    """weighted_average of packed updates (one layout for all), as one Array per key.

    The average is elementwise, so averaging the packed buffers is averaging each array; the
    inputs are read in place as before and each key's result is copied once into its Array.
    """
    if not updates or len(updates) != len(weights):
        raise AggregationError(f"{len(updates)} updates for {len(weights)} weights")
    for index, update in enumerate(updates[1:], start=1):
        if update.layout != updates[0].layout:
            raise AggregationError(f"update {index} has other arrays than update 0")
    total = float(sum(weights))
    if total <= 0:
        raise AggregationError(f"weights sum to {total}; nothing to average")
    factors = [float(w) / total for w in weights]
    inputs = [_values(update.array, "packed update") for update in updates]
    average = _average_values("packed update", inputs, factors)
    try:
        parts = split_values(average, updates[0].layout)
    except LayoutError as error:
        raise AggregationError(str(error)) from error
    result = ArrayRecord()
    for key, values in parts.items():
        result[key] = to_array(values)
    return result


def _values(array: Array, key: str) -> np.ndarray:
    try:
        return array_values(array)
    except ValueError as error:
        raise AggregationError(f"{key}: {error}") from error


def _average(key: str, inputs: list[np.ndarray], factors: list[float]) -> Array:
    return to_array(_average_values(key, inputs, factors))


def _average_values(key: str, inputs: list[np.ndarray], factors: list[float]) -> np.ndarray:
    shape, dtype = inputs[0].shape, inputs[0].dtype
    for index, values in enumerate(inputs[1:], start=1):
        if values.shape != shape or values.dtype != dtype:
            raise AggregationError(
                f"{key}: update {index} is {values.dtype}{list(values.shape)}, "
                f"update 0 is {dtype}{list(shape)}"
            )
    out_dtype = np.result_type(dtype, 1.0)  # float32 stays float32; integers average as floats
    flat = [values.reshape(-1) for values in inputs]
    out = np.empty(flat[0].size, dtype=out_dtype)
    scaled = np.empty(min(BLOCK_ELEMENTS, out.size), dtype=out_dtype)
    for start in range(0, out.size, BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, out.size)
        block, spare = out[start:stop], scaled[: stop - start]
        np.multiply(flat[0][start:stop], factors[0], out=block)
        for values, factor in zip(flat[1:], factors[1:], strict=True):
            np.multiply(values[start:stop], factor, out=spare)
            np.add(block, spare, out=block)
    return out.reshape(shape)
