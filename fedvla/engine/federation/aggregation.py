"""Weighted average of client ArrayRecords, summed as the updates arrive.

A round's updates need not all be in memory at once: RunningAverage adds each update into one
running sum of w_i * x_i as it arrives, and the caller drops the update. Memory then holds the
sum and the update being added, whatever the number of clients (Flower's aggregate_arrayrecords
needs every update at once: it scales each by w_i / sum(w), a sum known only when the last one
is in). Each client's array is read in place from the bytes it arrived in and scaled a
cache-sized block at a time, so memory sees each input byte once and the sum once per client,
as a plain `sum += x` would. The sum is kept in the result's dtype (float32 stays float32) and
divided by sum(w) at the end: within float rounding of Flower's average (which rounds w_i / sum(w)
instead), and the same bits for the same updates added in the same order (the strategy adds
them in a fixed client order).
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
"""Elements scaled per block (256 KiB in float32): the scaled block stays in cache."""


class AggregationError(ValueError):
    """Client updates that cannot be averaged together (different keys, shapes or dtypes)."""


class RunningAverage:
    """sum(w_i * record_i) / sum(w_i), key by key, fed one record at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self._sums: dict[str, np.ndarray] = {}
        self._layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._scratch = np.empty(0, dtype=np.float32)

    def add(self, record: ArrayRecord, weight: float) -> None:
        """Add one update; the record is not kept (its caller may free it at once)."""
        keys = list(record.keys())
        if self.count and keys != list(self._layout):
            raise AggregationError(f"update {self.count} has other arrays than update 0")
        weight = float(weight)
        for key in keys:
            values = _values(record[key], key)
            if not self.count:
                self._start(key, values)
            self._add(key, values, weight)
        self.count += 1
        self.total += weight

    def result(self) -> ArrayRecord:
        """The average of the updates added, each array in its updates' dtype (integers: float)."""
        averaged = ArrayRecord()
        for key, values in self.result_values().items():
            averaged[key] = to_array(values)
        return averaged

    def result_values(self) -> dict[str, np.ndarray]:
        """The average as arrays (the running sums, divided in place)."""
        if not self.count:
            raise AggregationError("no updates to average")
        if self.total <= 0:
            raise AggregationError(f"weights sum to {self.total}; nothing to average")
        averaged: dict[str, np.ndarray] = {}
        for key, (shape, _) in self._layout.items():
            sums = self._sums.pop(key)
            np.divide(sums, self.total, out=sums)
            averaged[key] = sums.reshape(shape)
        self._layout.clear()
        return averaged

    def _start(self, key: str, values: np.ndarray) -> None:
        self._layout[key] = (values.shape, values.dtype)
        out_dtype = np.result_type(values.dtype, 1.0)  # float32 stays float32, integers: float64
        self._sums[key] = np.zeros(values.size, dtype=out_dtype)

    def _add(self, key: str, values: np.ndarray, weight: float) -> None:
        shape, dtype = self._layout[key]
        if values.shape != shape or values.dtype != dtype:
            raise AggregationError(
                f"{key}: update {self.count} is {values.dtype}{list(values.shape)}, "
                f"update 0 is {dtype}{list(shape)}"
            )
        sums, flat = self._sums[key], values.reshape(-1)
        if self._scratch.size < min(BLOCK_ELEMENTS, sums.size) or self._scratch.dtype != sums.dtype:
            self._scratch = np.empty(BLOCK_ELEMENTS, dtype=sums.dtype)
        for start in range(0, sums.size, BLOCK_ELEMENTS):
            stop = min(start + BLOCK_ELEMENTS, sums.size)
            scaled = self._scratch[: stop - start]
            np.multiply(flat[start:stop], weight, out=scaled, dtype=sums.dtype)
            np.add(sums[start:stop], scaled, out=sums[start:stop])


class PackedRunningAverage:
    """RunningAverage of packed updates (transport.PackedArrays, one layout for all).

    The average is elementwise, so averaging the packed buffers is averaging each array: the sum
    runs over each update's one flat Array, read in place, and is cut back into one Array per key
    at the end, as the strategy's arrays always are.
    """

    def __init__(self) -> None:
        self._average = RunningAverage()
        self._layout: str | None = None

    def add(self, update: PackedArrays, weight: float) -> None:
        if self._layout is None:
            self._layout = update.layout
        elif update.layout != self._layout:
            raise AggregationError(f"update {self._average.count} has other arrays than update 0")
        record = ArrayRecord()
        record[_PACKED] = update.array
        self._average.add(record, weight)

    def result(self) -> ArrayRecord:
        if self._layout is None:
            raise AggregationError("no updates to average")
        flat = self._average.result_values()[_PACKED]
        try:
            parts = split_values(flat, self._layout)
        except LayoutError as error:
            raise AggregationError(str(error)) from error
        averaged = ArrayRecord()
        for key, values in parts.items():
            averaged[key] = to_array(values)
        return averaged


_PACKED = "packed update"


def weighted_average(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """All updates at once: RunningAverage fed in the order given."""
    if not records or len(records) != len(weights):
        raise AggregationError(f"{len(records)} records for {len(weights)} weights")
    average = RunningAverage()
    for record, weight in zip(records, weights, strict=True):
        average.add(record, weight)
    return average.result()


def _values(array: Array, key: str) -> np.ndarray:
    try:
        return array_values(array)
    except ValueError as error:
        raise AggregationError(f"{key}: {error}") from error
