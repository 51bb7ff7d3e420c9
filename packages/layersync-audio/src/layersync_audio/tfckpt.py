"""Read float tensors from a TensorFlow (v1/v2 "tensor bundle") checkpoint without TensorFlow.

A checkpoint ``<prefix>.index`` is a LevelDB-format table (SSTable: data blocks of
prefix-compressed keys, an index block, a 48-byte footer ending in a magic number) mapping each
variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size); the tensor bytes
live in ``<prefix>.data-00000-of-00001`` (little-endian). Only uncompressed tables, one shard
and DT_FLOAT tensors are supported (what the musicnn checkpoints hold).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from layersync.assets import AssetError

MAGIC = 0xDB4775248B80FB57
DT_FLOAT = 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, list]:
    """A protobuf message -> {field number: [values]} (varints as int, bytes as bytes)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the table block a BlockHandle points at."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    block = data[offset : offset + size]
    if len(block) != size or data[offset + size] != 0:  # trailer byte 0: no compression
        raise ValueError("truncated or compressed table block")
    (restarts,) = struct.unpack_from("<I", block, size - 4)
    end, pos, key, entries = size - 4 - 4 * restarts, 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + length]))
        pos += length
    return entries


def read_index(path: str | Path) -> dict[str, tuple[tuple[int, ...], int, int]]:
    """``<prefix>.index`` -> {name: (shape, offset, size)} of its float32 tensors."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != MAGIC:
            raise ValueError("no table footer (not a TensorFlow checkpoint index)")
        footer, pos = data[-48:-8], 0
        for _ in range(2):  # the metaindex block handle (offset, size): unused
            _, pos = _varint(footer, pos)
        start = pos
        for _ in range(2):  # the index block handle
            _, pos = _varint(footer, pos)
        index_handle = footer[start:pos]
        tensors = {}
        for _, handle in _block(data, index_handle):
            for key, value in _block(data, handle):
                if not key:  # the BundleHeaderProto
                    continue
                f = _fields(value)
                dtype = f.get(1, [0])[0]
                if dtype != DT_FLOAT or f.get(3, [0])[0] != 0:
                    continue
                dims = _fields(f[2][0]).get(2, []) if 2 in f else []
                shape = tuple(_fields(d).get(1, [0])[0] for d in dims)
                tensors[key.decode()] = (shape, f.get(4, [0])[0], f.get(5, [0])[0])
    except (ValueError, IndexError, struct.error) as e:
        raise AssetError(f"{path}: cannot read TensorFlow checkpoint index ({e})") from None
    except OSError as e:
        raise AssetError(f"{path}: cannot read ({e.strerror or e})") from None
    return tensors


def load_checkpoint(index: str | Path, data: str | Path | None = None) -> dict[str, np.ndarray]:
    """All float32 tensors of a checkpoint: ``index`` is the ``.index`` file, ``data`` the
    ``.data-00000-of-00001`` file (default: beside the index, same prefix)."""
    index = Path(index)
    prefix = index.name.removesuffix(".index")  # musicnn's files are ".index" and ".data-..."
    data = Path(data) if data else index.with_name(prefix + ".data-00000-of-00001")
    entries = read_index(index)
    try:
        raw = data.read_bytes()
    except OSError as e:
        raise AssetError(f"{data}: cannot read ({e.strerror or e})") from None
    out = {}
    for name, (shape, offset, size) in entries.items():
        if offset + size > len(raw) or size != 4 * int(np.prod(shape, dtype=np.int64)):
            raise AssetError(f"{data}: tensor {name!r} {shape} lies outside the file")
        out[name] = np.frombuffer(raw, "<f4", count=size // 4, offset=offset).reshape(shape)
    return out
