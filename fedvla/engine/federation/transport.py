"""What crosses the wire: trainable weights (optionally in reduced precision) and statistics."""

import json
import pickle
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, SupportsIndex

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType
from numpy.lib import format as npy

BFLOAT16_AS = np.uint16
"""numpy has no bfloat16: its bits travel as uint16 and are viewed back on arrival."""


def encode_arrays(state: dict[str, torch.Tensor], dtype: str) -> ArrayRecord:
    """Float tensors in the transport dtype, as an ArrayRecord."""
    record = ArrayRecord()
    for key, tensor in state.items():
        value = tensor.detach().cpu()
        if dtype == "bfloat16":
            bits = value.to(torch.bfloat16).view(torch.int16).numpy().view(BFLOAT16_AS)
            record[key] = to_array(bits)
        else:
            record[key] = to_array(value.to(getattr(torch, dtype)).numpy())
    return record


def decode_arrays(record: ArrayRecord, dtype: str) -> dict[str, torch.Tensor]:
    """Float32 tensors back from an ArrayRecord sent in the transport dtype.

    In float32 they share the record's bytes (no copy): read them, never write to them.
    """
    state: dict[str, torch.Tensor] = {}
    for key, array in record.items():
        values = array_values(array)
        if dtype == "bfloat16":
            bits = _shared_tensor(values.view(np.int16))
            state[key] = bits.view(torch.bfloat16).to(torch.float32)
        else:
            state[key] = _shared_tensor(values).to(torch.float32)
    return state


def array_values(array: Array) -> np.ndarray:
    """The array's values as a read-only view of the bytes it holds (a copy only if it must).

    Array.numpy() goes through np.load, which copies the values twice.
    """
    if array.stype != SType.NUMPY:
        raise ValueError(f"cannot read an array serialised as {array.stype!r}")
    shape, fortran_order, dtype, offset = _npy_header(array.data)
    if fortran_order or dtype.hasobject:
        return array.numpy()
    count = int(np.prod(shape))
    return np.frombuffer(array.data, dtype=dtype, count=count, offset=offset).reshape(shape)


def npy_array(data: bytes) -> Array:
    """An Array of bytes in numpy's .npy format (an Array's own ``data``), sharing them."""
    shape, _, dtype, _ = _npy_header(data)
    return Array(dtype=str(dtype), shape=tuple(shape), stype=SType.NUMPY, data=data)


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Shape, Fortran order, dtype and the values' offset of .npy bytes (ValueError if none)."""
    stream = BytesIO(data)  # shares the bytes
    version = npy.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
    else:
        shape, fortran_order, dtype = npy.read_array_header_2_0(stream)
    return tuple(shape), bool(fortran_order), dtype, stream.tell()


class OutOfBandArray(Array):
    """An Array whose bytes pickle out of band (pickle protocol 5); see out_of_band_array()."""

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        if int(protocol) < 5:
            return super().__reduce_ex__(protocol)
        fields = (self.dtype, self.shape, self.stype, pickle.PickleBuffer(self.data))
        return (_out_of_band_array, fields)


def _out_of_band_array(dtype: str, shape: tuple[int, ...], stype: str, data: Any) -> Array:
    return OutOfBandArray(dtype=dtype, shape=tuple(shape), stype=stype, data=bytes(data))


def ray_carries_messages() -> bool:
    """Whether this process is part of a Ray cluster: Flower's simulation engine."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def out_of_band_array(array: Array) -> Array:
    """The same Array, sharing its bytes, for a message that Ray carries (simulation).

    Ray pickles every message between the server and a client's actor. Bytes in the pickle stream
    are copied through it; a buffer out of band goes into Ray's shared-memory object store as it
    is: a 100 MB update crosses in about 12 ms instead of 95 ms (this VM). Never for a SuperLink:
    Flower's wire format names each object's class, and the other side knows no OutOfBandArray.
    """
    return OutOfBandArray(
        dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data
    )


class ObjectStoreArray(Array):
    """An Array that Ray carries to every client by reference: its bytes go into Ray's object
    store once, on the first message that carries it, and each message after holds only the
    reference; see in_object_store()."""

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        if int(protocol) < 5 or not ray_carries_messages():
            return (_out_of_band_array, (self.dtype, tuple(self.shape), self.stype, self.data))
        return (_from_object_store, (self.dtype, tuple(self.shape), self.stype, self.object_ref()))

    def object_ref(self) -> Any:
        """The bytes' reference in Ray's object store, put there on the first call; it is
        freed when this Array (and every message that carried it) is."""
        with _PUTTING:
            ref = self.__dict__.get(_OBJECT_REF)
            if ref is None:
                import ray

                ref = ray.put(np.frombuffer(self.data, dtype=np.uint8))
                self.__dict__[_OBJECT_REF] = ref  # not a field: Array's own fields stay as they are
        return ref


_OBJECT_REF = "_fedvla_object_ref"
_PUTTING = threading.Lock()
"""Flower's simulation serialises messages in several threads at once: one put per Array."""


def _from_object_store(dtype: str, shape: tuple[int, ...], stype: str, ref: Any) -> Array:
    import ray

    values = ray.get(ref)  # a read-only view of the object store's shared memory
    return Array(dtype=dtype, shape=tuple(shape), stype=stype, data=values.tobytes())


def in_object_store(array: Array) -> Array:
    """The same Array, sharing its bytes, for the messages of a round that Ray carries.

    Ray serialises each message to a client's actor on its own: a buffer pickled out of band
    (out_of_band_array) is written into the object store once per message, so a round's weights
    went in as many times as it has clients (with 16 and more clients of the medium policy, the
    256 MB store spilled to disk). This Array puts them in once; each message then carries
    a reference, and the actor reads the shared bytes. Never for a SuperLink (see
    out_of_band_array).
    """
    return ObjectStoreArray(
        dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data
    )


def to_array(values: np.ndarray) -> Array:
    """Array(values), serialised with one copy of the values (np.save into a buffer makes more)."""
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    header = BytesIO()
    npy.write_array_header_1_0(header, npy.header_data_from_array_1_0(values))
    data = b"".join((header.getvalue(), values.data))
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype=SType.NUMPY, data=data)


def _shared_tensor(values: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only on purpose; torch warns about any such array
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(values)


class LayoutError(ValueError):
    """A packed Array and its layout do not fit together."""


@dataclass(frozen=True)
class PackedArrays:
    """Named arrays of one dtype as ONE flat Array, and the layout that cuts it back.

    Flower 1.42 moves a message as a head plus one object per Array (and per 5 MB chunk of
    one), each its own request through the SuperLink and SuperNode, each with its own retry
    backoff when it is not there yet: 29 tensors of the tiny policy and 20 statistics were
    about 90 requests per hop and per direction, seconds of every deployment round on a loaded
    machine. Packed, a weights update is one Array (one object per 5 MB), whatever the policy.

    ``layout`` is JSON, ``[[key, [dim, ...]], ...]`` in the buffer's order: each array's
    values follow the previous one's.
    """

    array: Array
    layout: str

    def count_bytes(self) -> int:
        return len(self.array.data)

    def out_of_band(self) -> "PackedArrays":
        """The same, its bytes pickled out of band (a message that Ray carries)."""
        return PackedArrays(out_of_band_array(self.array), self.layout)

    def in_object_store(self) -> "PackedArrays":
        """The same, carried by reference through Ray's object store (one round's messages)."""
        return PackedArrays(in_object_store(self.array), self.layout)


def pack_values(values: Mapping[str, np.ndarray]) -> PackedArrays:
    """Arrays of one dtype in one Array: the values are copied once, into the Array's bytes."""
    dtypes = {array.dtype for array in values.values()}
    if len(dtypes) > 1:
        raise LayoutError(f"cannot pack arrays of several dtypes: {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    total = sum(int(array.size) for array in values.values())
    header = BytesIO()
    npy.write_array_header_1_0(
        header, {"descr": npy.dtype_to_descr(dtype), "fortran_order": False, "shape": (total,)}
    )
    parts: list[Any] = [header.getvalue()]
    parts += [np.ascontiguousarray(array).reshape(-1).data for array in values.values()]
    layout = json.dumps([[key, list(array.shape)] for key, array in values.items()])
    array = Array(dtype=str(dtype), shape=(total,), stype=SType.NUMPY, data=b"".join(parts))
    return PackedArrays(array, layout)


def unpack_values(packed: PackedArrays) -> dict[str, np.ndarray]:
    """The named arrays as read-only views of the packed Array's bytes (no copy)."""
    return split_values(array_values(packed.array), packed.layout)


def split_values(flat: np.ndarray, layout: str) -> dict[str, np.ndarray]:
    """A packed buffer cut into its named arrays, as views of it."""
    flat = flat.reshape(-1)
    try:
        entries = [(str(key), tuple(int(d) for d in shape)) for key, shape in json.loads(layout)]
    except (ValueError, TypeError) as error:
        raise LayoutError(f"unreadable layout: {error}") from error
    values: dict[str, np.ndarray] = {}
    offset = 0
    for key, shape in entries:
        size = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or offset + size > flat.size or key in values:
            raise LayoutError(f"layout entry {key!r} {list(shape)} does not fit the packed array")
        values[key] = flat[offset : offset + size].reshape(shape)
        offset += size
    if offset != flat.size:
        raise LayoutError(f"the layout covers {offset} of the packed array's {flat.size} values")
    return values


def pack_arrays(state: Mapping[str, torch.Tensor], dtype: str) -> PackedArrays:
    """Float tensors in the transport dtype, packed (bfloat16 as its uint16 bits)."""
    values: dict[str, np.ndarray] = {}
    for key, tensor in state.items():
        value = tensor.detach().cpu()
        if dtype == "bfloat16":
            values[key] = value.to(torch.bfloat16).view(torch.int16).numpy().view(BFLOAT16_AS)
        else:
            values[key] = value.to(getattr(torch, dtype)).numpy()
    return pack_values(values)


def unpack_arrays(packed: PackedArrays, dtype: str) -> dict[str, torch.Tensor]:
    """Float32 tensors back from arrays packed in the transport dtype.

    In float32 they share the packed Array's bytes (no copy): read them, never write to them.
    """
    state: dict[str, torch.Tensor] = {}
    for key, values in unpack_values(packed).items():
        if dtype == "bfloat16":
            state[key] = _shared_tensor(values.view(np.int16)).view(torch.bfloat16).float()
        else:
            state[key] = _shared_tensor(values).to(torch.float32)
    return state


def pack_record(record: ArrayRecord, dtype: str) -> PackedArrays:
    """A float32 ArrayRecord (the strategy's arrays), packed in the transport dtype."""
    return pack_arrays({k: _shared_tensor(array_values(v)) for k, v in record.items()}, dtype)


def to_float32_packed(packed: PackedArrays, dtype: str) -> PackedArrays:
    """The same arrays in float32 (the arrays themselves when they already are)."""
    if dtype == "float32":
        return packed
    return pack_arrays(unpack_arrays(packed, dtype), "float32")


def stats_to_record(stats: dict[str, dict[str, np.ndarray]]) -> "PackedArrays":
    """Normalisation statistics as one packed float64 Array of `feature|stat` values."""
    return pack_values(
        {
            f"{feature}|{name}": np.asarray(value, dtype=np.float64)
            for feature, values in stats.items()
            for name, value in values.items()
        }
    )


def stats_from_record(packed: "PackedArrays") -> dict[str, dict[str, np.ndarray]]:
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, values in unpack_values(packed).items():
        feature, name = key.split("|", 1)
        stats.setdefault(feature, {})[name] = np.array(values)  # its own, writable copy
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


OBJECT_PULL_BACKOFF_S = 0.02
"""First wait before looking again for a message's arrays that have not arrived yet."""
OBJECT_PULL_BACKOFF_CAP_S = 0.2
"""Longest wait between looks. Measured (bench/deployment_run.py, 2 CPUs under load): the
SuperNode spent 0.6-1.7 s per round pulling a train message's objects, most of it waiting
for the ServerApp to push them; with 0.5 s between late looks, up to 0.5 s of that was the
SuperNode not looking. Each look is one request for a handful of objects: cheap."""
OBJECT_PUSHES = 8
"""Objects the ServerApp pushes at once (Flower's default: 2; Flower never runs more than the
machine's CPUs). Measured on 2 CPUs (bench/deployment_run.py, 10 rounds, load 7-15): lifting
that cap too, so that 8 objects moved at once each way, made a deployment round slower (2.36 and
2.40 s against 1.95 and 1.92 s): more requests at once only queue in the SuperLink, and pulls
of objects not there yet multiply."""


def pull_objects_sooner(*modules: Any) -> None:
    """Flower's object pulls in ``modules`` look again after OBJECT_PULL_BACKOFF_S, not 1 s.

    A deployment message travels as a head, then its arrays; the receiver (a SuperNode pulling a
    ServerApp's message, the ServerApp's grid pulling a reply) sees the head first and pulls
    the arrays with Flower's ``pull_objects``, whose backoff starts at 1 s and doubles to 10 s:
    seconds added to every round whenever it looked before the sender had pushed them. Each
    module named here calls ``pull_objects`` by its own global name; that name is replaced.
    """
    import functools

    from flwr.supercore.inflatable import inflatable_utils

    quicker = functools.partial(
        inflatable_utils.pull_objects,
        initial_backoff=OBJECT_PULL_BACKOFF_S,
        backoff_cap=OBJECT_PULL_BACKOFF_CAP_S,
    )
    for module in modules:
        module.pull_objects = quicker


def push_objects_wider(*modules: Any) -> None:
    """Flower's object pushes in ``modules`` push OBJECT_PUSHES objects at once, not 2.

    Flower reads its own setting (FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES) once, at import, into
    ``push_objects``' default; a ServerApp process has imported Flower before our code runs.
    Each module named here calls ``push_objects`` by its own global name; that name is replaced.
    """
    import functools

    from flwr.supercore.inflatable import inflatable_utils

    wider = functools.partial(inflatable_utils.push_objects, max_concurrent_pushes=OBJECT_PUSHES)
    for module in modules:
        module.push_objects = wider
