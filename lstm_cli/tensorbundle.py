"""TensorFlow's checkpoint format (TensorBundle: the SavedModel's variables/), read with the standard library.

`variables.index` is a LevelDB table (uncompressed blocks of prefix-compressed keys, a footer naming the index
block) mapping each variable's checkpoint key to a BundleEntryProto (dtype, shape, offset and size in
`variables.data-00000-of-00001`, which holds the raw little-endian values). `entries` returns, for the keys
asked for, where their values lie, each checked to lie inside the data file with a size its shape and dtype
give, so that lstm_cli.schema.npz_arrays can view them in place (never a copy, nothing executed). Anything
else (a compressed block, a partitioned variable, another shard, a truncated or forged file) raises ValueError.
Nothing here imports TensorFlow: the numpy engine reads its weights from the SavedModel's own checkpoint."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

INDEX = "variables/variables.index"
DATA = "variables/variables.data-00000-of-00001"

_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)  # LevelDB's table magic number, the footer's last 8 bytes
_FOOTER = 48
_DTYPES = {1: "<f4", 3: "<i4", 9: "<i8"}  # TensorFlow DataType -> numpy: DT_FLOAT, DT_INT32, DT_INT64


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protocol buffer message: varints as ints, the rest as bytes."""
    i = 0
    while i < len(message):
        tag, i = _varint(message, i)
        wire = tag & 7
        if wire == 0:
            value, i = _varint(message, i)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = message[i : i + width], i + width
        elif wire == 2:
            length, i = _varint(message, i)
            value, i = message[i : i + length], i + length
        else:
            raise ValueError(f"protocol buffer wire type {wire}, which a checkpoint entry does not use")
        if i > len(message):
            raise ValueError("truncated protocol buffer")
        yield tag >> 3, value


def _block(index: bytes, handle: bytes) -> bytes:
    """The contents of the table block a BlockHandle (offset, size varints) points at; it must be uncompressed."""
    offset, i = _varint(handle, 0)
    size, _ = _varint(handle, i)
    if offset + size + 5 > len(index):  # each block is followed by its compression type and a checksum
        raise ValueError(f"a block at {offset:,} of {size:,} bytes ends past the file")
    if index[offset + size] != 0:
        raise ValueError("a compressed block; TensorFlow writes checkpoints uncompressed")
    return index[offset : offset + size]


def _entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each entry of a table block, its keys prefix-compressed."""
    if len(block) < 4:
        raise ValueError("a block too short for its restart count")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise ValueError(f"a block claims {restarts:,} restart points, more than it holds")
    i, key = 0, b""
    while i < end:
        shared, i = _varint(block, i)
        unshared, i = _varint(block, i)
        length, i = _varint(block, i)
        if shared > len(key) or i + unshared + length > end:
            raise ValueError("a block entry runs past its block")
        key = key[:shared] + block[i : i + unshared]
        i += unshared
        yield key, block[i : i + length]
        i += length


def _int(value: int | bytes, what: str) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{what} is not an integer")
    return value


def _shape(message: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in _fields(message):
        if number == 2:  # TensorShapeProto.dim
            if not isinstance(value, bytes):
                raise ValueError("a dimension that is not a message")
            dims.append(next((_int(v, "a dimension") for n, v in _fields(value) if n == 1), 0))
        elif number == 3 and value:  # unknown_rank
            raise ValueError("a variable of unknown rank")
    if any(d < 0 or d >= 1 << 40 for d in dims):
        raise ValueError(f"a variable of shape {dims}")
    return tuple(dims)


def _table(index: bytes) -> Iterator[tuple[str, bytes]]:
    """(checkpoint key, BundleEntryProto) of every variable in the index, in key order."""
    if len(index) < _FOOTER or index[-8:] != _MAGIC:
        raise ValueError("not a TensorFlow checkpoint index (no table footer)")
    footer = index[-_FOOTER:]
    _, i = _varint(footer, 0)
    _, i = _varint(footer, i)  # the metaindex block's handle, unused
    for _, handle in _entries(_block(index, footer[i:])):
        for key, value in _entries(_block(index, handle)):
            if key == b"":  # the BundleHeaderProto: its endianness (2) must be little (0)
                if any(number == 2 and field != 0 for number, field in _fields(value)):
                    raise ValueError("a big-endian checkpoint")
                continue
            try:
                yield key.decode("utf-8"), value
            except UnicodeDecodeError:
                raise ValueError("a checkpoint key that is not UTF-8") from None


def entries(index: bytes, data_size: int, keys: Mapping[str, str]) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """For each name -> checkpoint key of `keys`: (shape, numpy dtype string, offset in the data file) of that
    key's values, a numeric tensor of the single shard lying within the data file's `data_size` bytes."""
    wanted: dict[str, list[str]] = {}
    for name, key in keys.items():
        wanted.setdefault(key, []).append(name)  # two weights of equal values may share a key
    found = {}
    for key, value in _table(index):
        if key in wanted:
            entry = _entry(key, value, data_size)
            found.update((name, entry) for name in wanted[key])
    missing = sorted(set(keys) - set(found))
    if missing:
        raise ValueError(f"has no variable {keys[missing[0]]!r} (weight {missing[0]!r})")
    return found


def numeric_entries(index: bytes, data_size: int) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Every numeric variable's (shape, numpy dtype string, offset), by checkpoint key (at save time)."""
    numeric = {}
    for key, value in _table(index):
        try:
            numeric[key] = _entry(key, value, data_size)
        except ValueError:  # a string (the object graph) or a lookup table's keys: not a weight
            continue
    return numeric


def _entry(key: str, value: bytes, data_size: int) -> tuple[tuple[int, ...], str, int]:
    """A BundleEntryProto's (shape, dtype, offset), checked."""
    dtype, shape, shard, offset, size = 0, (), 0, 0, 0
    for number, field in _fields(value):
        if number == 1:
            dtype = _int(field, f"the dtype of {key!r}")
        elif number == 2:
            if not isinstance(field, bytes):
                raise ValueError(f"the shape of {key!r} is not a message")
            shape = _shape(field)
        elif number == 3:
            shard = _int(field, f"the shard of {key!r}")
        elif number == 4:
            offset = _int(field, f"the offset of {key!r}")
        elif number == 5:
            size = _int(field, f"the size of {key!r}")
        elif number == 7:
            raise ValueError(f"variable {key!r} is partitioned into slices")
    if dtype not in _DTYPES:
        raise ValueError(f"variable {key!r} holds TensorFlow dtype {dtype}, not numbers")
    if shard != 0:
        raise ValueError(f"variable {key!r} lies in shard {shard}; lstm-cli writes one")
    itemsize = int(_DTYPES[dtype][-1])
    if size != _count(shape) * itemsize or offset + size > data_size:
        raise ValueError(f"variable {key!r}: {size:,} bytes at {offset:,} for shape {list(shape)}, "
                         f"in a data file of {data_size:,} bytes")  # fmt: skip
    return shape, _DTYPES[dtype], offset


def arrays(index: bytes, data: bytes, keys: Mapping[str, str]) -> dict:
    """The arrays of `keys` (name -> checkpoint key), in that order: read-only views of `data`, not copies."""
    import numpy as np

    found = entries(index, len(data), keys)
    return {
        name: np.frombuffer(data, found[name][1], count=_count(found[name][0]), offset=found[name][2]).reshape(
            found[name][0]
        )
        for name in keys
    }


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count
