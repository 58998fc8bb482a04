"""Checks a tree ptfile returned against a description of what torch reads (no torch needed).

Descriptions come from ``tests/fixtures/make_fixtures.py``: stored next to the golden
fixtures as ``<name>.expected.json`` + ``<name>.expected.bin``, or made on the fly by
the oracle and property tests.  Everything is compared exactly: dtype names, shapes,
strides, storage offsets, value bytes, which arrays share memory, parameter flags,
and every non-tensor value of the tree.

It also holds a minimal zip rewriter, used to turn a little-endian fixture into the
file torch would write on a big-endian machine.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ptfile
from ptfile.pickle.engine import GlobalRef

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parent.parent
#: The description format this checker understands (make_fixtures.FORMAT).
FORMAT = 1


@dataclass
class Expected:
    """What torch reads from one checkpoint."""

    name: str
    meta: dict
    blobs: bytes

    @property
    def tensors(self) -> list[dict]:
        return self.meta["tensors"]

    @property
    def path(self) -> Path:
        return ROOT / self.meta["file"]

    def blob(self, where: list[int]) -> bytes:
        start, length = where
        return self.blobs[start : start + length]

    def storage_dtypes(self) -> dict[str, dict]:
        """Storage key -> the description of one tensor viewing it (all views share the dtype)."""
        return {t["storage"]: t for t in self.tensors}


def fixture_names() -> list[str]:
    return sorted(p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json"))


def load_expected(name: str) -> Expected:
    meta = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    assert meta["format"] == FORMAT, f"{name}: description format {meta['format']}, expected {FORMAT}"
    return Expected(name, meta, (FIXTURES / f"{name}.expected.bin").read_bytes())


# -- the object tree ------------------------------------------------------------------


def compare_tree(loaded: Any, node: Any, expected: Expected, where: str = "<root>") -> dict[str, np.ndarray]:
    """Assert ``loaded`` matches the encoded ``node``; return the tensors found, by path."""
    found: dict[str, np.ndarray] = {}
    _compare(loaded, node, expected, where, found, [])
    return found


def _compare(loaded: Any, node: Any, expected: Expected, where: str, found: dict, seen: list) -> None:  # noqa: C901
    """``seen`` holds the records met so far, in order: a ``ref`` node points into it."""
    if node is None or type(node) in (bool, int, str):
        assert type(loaded) is type(node) and loaded == node, f"{where}: {loaded!r} != {node!r}"
        return
    if type(node) is list:
        assert type(loaded) is list and len(loaded) == len(node), f"{where}: {type(loaded).__name__} != list"
        for i, (item, sub) in enumerate(zip(loaded, node, strict=True)):
            _compare(item, sub, expected, f"{where}[{i}]", found, seen)
        return
    kind = node["t"]
    if kind == "tensor":
        assert isinstance(loaded, np.ndarray), f"{where}: {type(loaded).__name__} is not an array"
        found[node["path"]] = loaded
    elif kind == "float":
        assert type(loaded) is float, f"{where}: {type(loaded).__name__} is not a float"
        assert struct.pack(">d", loaded).hex() == node["bits"], f"{where}: {loaded!r} differs in its bits"
    elif kind == "complex":
        assert type(loaded) is complex, f"{where}: {type(loaded).__name__} is not a complex"
        assert struct.pack(">dd", loaded.real, loaded.imag).hex() == node["bits"], f"{where}: {loaded!r}"
    elif kind == "bytes":
        assert type(loaded) is bytes and loaded.hex() == node["hex"], f"{where}: {loaded!r:.60}"
    elif kind == "ndarray":
        assert type(loaded) is np.ndarray, f"{where}: {type(loaded).__name__} is not a plain ndarray"
        assert loaded.dtype.str == node["dtype"] and list(loaded.shape) == node["shape"], f"{where}: {loaded.dtype}"
        assert loaded.tobytes(order="C") == expected.blob(node["blob"]), f"{where}: array values differ"
        if node["fortran"]:
            assert loaded.flags.f_contiguous, f"{where}: Fortran order lost"
    elif kind == "npscalar":
        assert isinstance(loaded, np.generic), f"{where}: {type(loaded).__name__} is not a numpy scalar"
        assert loaded.dtype.str == node["dtype"], f"{where}: dtype {loaded.dtype.str} != {node['dtype']}"
        assert loaded.tobytes().hex() == node["hex"] and repr(loaded) == node["repr"], f"{where}: {loaded!r}"
    elif kind == "namespace":
        assert type(loaded) is argparse.Namespace, f"{where}: {type(loaded).__name__} is not a Namespace"
        assert list(vars(loaded)) == [key for key, _ in node["attrs"]], f"{where}: fields {list(vars(loaded))}"
        for key, sub in node["attrs"]:
            _compare(getattr(loaded, key), sub, expected, f"{where}.{key}", found, seen)
    elif kind == "tuple":
        assert type(loaded) is tuple and len(loaded) == len(node["items"]), f"{where}: {type(loaded).__name__}"
        for i, (item, sub) in enumerate(zip(loaded, node["items"], strict=True)):
            _compare(item, sub, expected, f"{where}[{i}]", found, seen)
    elif kind in ("dict", "odict", "defaultdict"):
        _compare_dict(loaded, node, expected, where, found, seen)
    elif kind in ("set", "frozenset"):
        assert type(loaded).__name__ == kind, f"{where}: {type(loaded).__name__} is not a {kind}"
        assert sorted(loaded, key=repr) == node["items"], f"{where}: {sorted(loaded, key=repr)} != {node['items']}"
    elif kind == "global":
        assert global_path(loaded) == node["path"], f"{where}: {loaded!r} is not {node['path']}"
    elif kind == "object":
        _compare_record(loaded, node, expected, where, found, seen)
    elif kind == "ref":
        assert loaded is seen[node["index"]], f"{where}: not the same record as the one met at index {node['index']}"
    else:
        raise AssertionError(f"{where}: unknown encoding {kind!r}")


def _compare_dict(loaded: Any, node: dict, expected: Expected, where: str, found: dict, seen: list) -> None:
    want_type = {"odict": OrderedDict, "defaultdict": defaultdict}.get(node["t"], dict)
    assert type(loaded) is want_type, f"{where}: {type(loaded).__name__} is not {want_type.__name__}"
    if want_type is defaultdict:
        _compare(loaded.default_factory, node["factory"], expected, f"{where}.default_factory", found, seen)
    _compare_items(list(loaded.items()), node["items"], expected, where, found, seen)
    if "metadata" in node:
        assert hasattr(loaded, "_metadata"), f"{where}: _metadata missing"
        _compare(loaded._metadata, node["metadata"], expected, f"{where}._metadata", found, seen)
    else:
        assert not hasattr(loaded, "_metadata"), f"{where}: unexpected _metadata"


def _compare_items(items: list, nodes: list, expected: Expected, where: str, found: dict, seen: list) -> None:
    assert len(items) == len(nodes), f"{where}: {len(items)} items, expected {len(nodes)}"
    for (key, value), (key_node, value_node) in zip(items, nodes, strict=True):
        _compare(key, key_node, expected, f"{where} key", found, seen)
        _compare(value, value_node, expected, f"{where}[{key!r}]", found, seen)


def global_path(value: Any) -> str | None:
    """The dotted name a pickle gives a class or function: ptfile's stand-in or a real one.

    A class named as a value inside a record's state comes back as the engine's own
    ``GlobalRef`` rather than a public ``ptfile.Global``; both name the global the same way.
    """
    if isinstance(value, ptfile.Global):
        return value.path
    if type(value) is GlobalRef:
        return f"{value.module}.{value.name}"
    if isinstance(value, type) or callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    return None


def _compare_record(loaded: Any, node: dict, expected: Expected, where: str, found: dict, seen: list) -> None:
    """An object of a class ptfile does not construct: a Record with the class, arguments and state pickled.

    Lightning's ``AttributeDict`` is the exception: ptfile gives its own dict subclass,
    holding the items the pickle set.
    """
    if isinstance(loaded, ptfile.AttributeDict):
        assert node["class"].endswith(".AttributeDict"), f"{where}: AttributeDict for {node['class']}"
        assert node["args"] == [] and node["state"] is None and node["listitems"] == [], f"{where}: {node}"
        seen.append(loaded)
        _compare_items(list(loaded.items()), node["dictitems"], expected, where, found, seen)
        return
    assert isinstance(loaded, ptfile.Record), f"{where}: {type(loaded).__name__} is not a Record of {node['class']}"
    assert loaded.classname == node["class"], f"{where}: class {loaded.classname} != {node['class']}"
    seen.append(loaded)
    _compare(list(loaded.args), node["args"], expected, f"{where}.args", found, seen)
    _compare(loaded.state, node["state"], expected, f"{where}.state", found, seen)
    _compare(loaded.listitems, node["listitems"], expected, f"{where}.listitems", found, seen)
    _compare_items(list(loaded.items.items()), node["dictitems"], expected, f"{where}.items", found, seen)


# -- tensors ---------------------------------------------------------------------------


def check_tensor(arr: np.ndarray, t: dict, expected: Expected, *, writable: bool | None, attributes: bool = True) -> None:
    """One array against its description: type, dtype, layout, bytes, flags.

    ``writable=None`` leaves the writeable flag, ``attributes=False`` a parameter's
    Python attributes, to a separate (xfail) test.
    """
    where = f"{expected.name}:{t['path']}"
    assert arr.dtype.name == t["dtype"], f"{where}: dtype {arr.dtype.name} != {t['dtype']}"
    assert arr.dtype.itemsize == t["itemsize"], f"{where}: itemsize {arr.dtype.itemsize}"
    assert list(arr.shape) == t["shape"], f"{where}: shape {arr.shape} != {t['shape']}"
    if not (t["conj"] or t["neg"]):  # a resolved conj/neg view is a fresh array with its own layout
        strides = [s // t["itemsize"] for s in arr.strides]
        assert strides == t["strides"], f"{where}: strides {strides} != {t['strides']}"
    assert arr.tobytes(order="C") == expected.blob(t["blob"]), f"{where}: values differ bitwise"
    assert isinstance(arr, ptfile.Parameter) == t["parameter"], f"{where}: Parameter is {type(arr).__name__}"
    if t["parameter"]:
        assert arr.requires_grad is t["requires_grad"], f"{where}: requires_grad {arr.requires_grad}"
        if not attributes:
            pass
        elif t["attributes"] is None:
            assert not arr.attributes, f"{where}: unexpected attributes {arr.attributes!r}"
        else:  # Python attributes the parameter carried (_rebuild_parameter_with_state)
            compare_tree(arr.attributes, t["attributes"], expected, f"{where} attributes")
    if writable is not None:
        assert arr.flags.writeable == writable, f"{where}: writeable is {arr.flags.writeable}"


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _element_offsets(t: dict) -> set[int]:
    """Storage element indices a tensor touches, from its description."""
    offsets = np.array(t["offset"])
    for i, (size, stride) in enumerate(zip(t["shape"], t["strides"], strict=True)):
        index = np.arange(size).reshape((-1,) + (1,) * (len(t["shape"]) - i - 1))
        offsets = offsets + index * stride
    return set(offsets.ravel().tolist())


def check_sharing(arrays: dict[str, np.ndarray], expected: Expected) -> None:
    """Arrays of one torch storage view one buffer, at their offsets; other storages do not overlap."""
    views = [t for t in expected.tensors if not (t["conj"] or t["neg"]) and t["storage_nbytes"] and 0 not in t["shape"]]
    starts: dict[int, int] = {}
    for t in views:
        start = _address(arrays[t["path"]]) - t["offset"] * t["itemsize"]
        known = starts.setdefault(t["group"], start)
        assert known == start, f"{expected.name}:{t['path']}: not at offset {t['offset']} of its storage's buffer"
    spans = sorted((start, start + _nbytes_of_group(expected, g), g) for g, start in starts.items())
    for (_, end, g1), (start, _, g2) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{expected.name}: storages of groups {g1} and {g2} overlap in memory"
    for i, a in enumerate(views):
        for b in views[i + 1 :]:
            overlap = a["group"] == b["group"] and bool(_element_offsets(a) & _element_offsets(b))
            shares = np.shares_memory(arrays[a["path"]], arrays[b["path"]])
            assert shares == overlap, f"{expected.name}: {a['path']} / {b['path']} share memory: {shares}, torch: {overlap}"


def _nbytes_of_group(expected: Expected, group: int) -> int:
    return next(t["storage_nbytes"] for t in expected.tensors if t["group"] == group)


def check_loaded(tree: Any, expected: Expected, *, writable: bool | None, skip: frozenset[str] = frozenset()) -> None:
    """Everything ``ptfile.load`` returned, against the description.

    ``skip`` names tensors whose values a separate (xfail) test checks.
    """
    arrays = compare_tree(tree, expected.meta["tree"], expected)
    assert set(arrays) == {t["path"] for t in expected.tensors}, f"{expected.name}: tensor paths differ"
    for t in expected.tensors:
        if t["path"] not in skip:
            check_tensor(arrays[t["path"]], t, expected, writable=writable)
    check_sharing(arrays, expected)


def check_info(info: ptfile.TensorInfo, t: dict, expected: Expected) -> None:
    where = f"{expected.name}:{t['path']}"
    assert info.dtype == t["dtype"] and info.torch_dtype == t["torch_dtype"], f"{where}: {info.dtype}"
    assert list(info.shape) == t["shape"] and list(info.strides) == t["strides"], f"{where}: {info}"
    assert info.offset == t["offset"], f"{where}: offset {info.offset} != {t['offset']}"
    assert info.storage == t["storage"] and info.storage_nbytes == t["storage_nbytes"], f"{where}: {info}"
    assert info.nbytes == len(expected.blob(t["blob"])), f"{where}: nbytes {info.nbytes}"
    assert info.parameter == t["parameter"] and info.location == "cpu", f"{where}: {info}"
    assert info.is_contiguous == t["contiguous"], f"{where}: is_contiguous {info.is_contiguous}"


def check_lazy(
    ckpt: ptfile.Checkpoint,
    expected: Expected,
    *,
    writable: bool | None,
    skip: frozenset[str] = frozenset(),
    attributes: bool = False,
) -> None:
    """A lazy handle's keys, infos and tensors, against the description.

    Parameter attributes are left to ``test_open_keeps_parameter_attributes`` (a known
    loader bug) unless ``attributes`` is true.
    """
    assert ckpt.keys() == [t["path"] for t in expected.tensors]
    arrays = {}
    for t in expected.tensors:
        check_info(ckpt.info(t["path"]), t, expected)
        arrays[t["path"]] = arr = ckpt[t["path"]]
        if t["path"] not in skip:
            check_tensor(arr, t, expected, writable=writable, attributes=attributes)
    check_sharing(arrays, expected)


# -- a big-endian copy of a checkpoint ----------------------------------------------------------

_EOCD = b"PK\x05\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
#: torch aligns record data to 64 bytes; the rewrite keeps that so mmap views stay aligned.
ALIGNMENT = 64


@dataclass(frozen=True)
class ZipEntry:
    name: str
    crc: int
    start: int  # offset of the record's data in the file
    size: int


def zip_entries(data: bytes) -> list[ZipEntry]:
    """The records of a small, stored zip (torch's files: no ZIP64 values needed), in directory order."""
    end = data.rindex(_EOCD)
    count, _, cd_offset = struct.unpack_from("<HII", data, end + 10)
    entries, pos = [], cd_offset
    for _ in range(count):
        assert data[pos : pos + 4] == _CENTRAL
        method, crc, _, size, name_len, extra_len, comment_len = struct.unpack_from("<H4xIIIHHH", data, pos + 10)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        name = data[pos + 46 : pos + 46 + name_len].decode()
        assert method == 0, f"{name}: compressed record"
        local_name, local_extra = struct.unpack_from("<HH", data, local + 26)
        entries.append(ZipEntry(name, crc, local + 30 + local_name + local_extra, size))
        pos += 46 + name_len + extra_len + comment_len
    return entries


def read_zip(data: bytes) -> list[tuple[str, bytes]]:
    """``[(name, bytes)]`` of every record."""
    return [(e.name, data[e.start : e.start + e.size]) for e in zip_entries(data)]


def write_zip(records: list[tuple[str, bytes]]) -> bytes:
    """A stored zip with torch's ``FB`` padding field aligning each record's data."""
    out, central = bytearray(), bytearray()
    for name, payload in records:
        raw_name = name.encode()
        pad = -(len(out) + 30 + len(raw_name) + 4) % ALIGNMENT
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        crc = zlib.crc32(payload)
        fields = struct.pack("<HHHHHIIIHH", 20, 0x0800, 0, 0, 0, crc, len(payload), len(payload), len(raw_name), len(extra))
        central += _CENTRAL + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(out)) + raw_name + extra
        out += _LOCAL + fields + raw_name + extra + payload
    cd_offset = len(out)
    out += central
    out += _EOCD + struct.pack("<HHHHIIH", 0, 0, len(records), len(records), len(central), cd_offset, 0)
    return bytes(out)


def swap_unit(t: dict) -> int:
    """Bytes torch swaps together in an element: complex numbers swap each half."""
    return t["itemsize"] // 2 if t["torch_dtype"].startswith("complex") else t["itemsize"]


def big_endian(data: bytes, expected: Expected) -> bytes:
    """The checkpoint as a big-endian machine writes it: storages swapped, ``byteorder`` = big."""
    prefix = expected.meta["prefix"]
    by_storage = expected.storage_dtypes()
    records = []
    for name, payload in read_zip(data):
        local = name.removeprefix(prefix + "/")
        if local == "byteorder":
            assert payload == b"little"
            payload = b"big"
        elif local.startswith("data/") and swap_unit(by_storage[local[5:]]) > 1:
            unit = swap_unit(by_storage[local[5:]])
            payload = np.frombuffer(payload, f"<u{unit}").astype(f">u{unit}").tobytes()
        records.append((name, payload))
    return write_zip(records)
