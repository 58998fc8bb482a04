"""Distributed checkpoints (``torch.distributed.checkpoint``, DCP) read without torch.

A DCP checkpoint is a folder (``torch/distributed/checkpoint/filesystem.py``, torch 2.13)::

    folder/.metadata             pickle.dump(Metadata), protocol 4 on Python <= 3.13
    folder/__{rank}_{n}.distcp   torch.save blobs back to back, one per item

``Metadata`` is a dataclass pickled as NEWOBJ + BUILD of its ``__dict__``:

* ``state_dict_metadata``: ``{fqn: TensorStorageMetadata | BytesStorageMetadata}``.  A
  tensor's entry holds ``properties`` (``TensorProperties``, whose BUILD state is the tuple
  ``(dtype, layout, requires_grad, memory_format, pin_memory)``; ``memory_format`` is the
  enum ``_MEM_FORMAT_ENCODING``, pickled as REDUCE(cls, (value,))), its global ``size``
  (``torch.Size``) and its ``chunks`` (``ChunkStorageMetadata(offsets, sizes)``).
* ``planner_data``: ``{fqn: path}``, where the value sits in the nested state dict
  (``('model', 'w')``; an int indexes a list).
* ``storage_data``: ``{MetadataIndex(fqn, offset, index): _StorageInfo(relative_path,
  offset, length[, transform_descriptors])}``.  A tensor chunk's index carries the
  chunk's offsets; a non-tensor value's carries None.
* ``storage_meta`` (``StorageMeta``: checkpoint_id, a random save_id...) and ``version``.

Each item is ``torch.save`` output at ``[offset, offset + length)`` of its file: a tensor
chunk (DCP clones it first, so its storage is exactly the chunk), or a non-tensor value
saved whole (a ``BYTE_IO`` item, which torch reads back with ``weights_only=False``).

**Reading.**  ``.metadata`` runs through the same restricted engine and allowlist as
every checkpoint.  Its dataclasses are inert records vouched for by this container only
(:meth:`MetadataPickle.inert_classes`): anywhere else they are graded as torch.distributed
code.  The enum has an allowlist entry that returns the member's name.  Each item is
opened as a torch zip over its byte range of the file (:class:`SliceSource`) and read like
any checkpoint, its storages checked against its own records.

**Checked when the folder is opened**, before any tensor byte is read: every chunk lies
inside its tensor's global shape, no two chunks overlap and together they cover every
element; every item names a plain file of the folder (never ``../x``), lies inside that
file and is large enough for its chunk's bytes; items written through stream transforms
(DCP's compression extensions) are refused as unsupported.  When read, a chunk's item
must hold one tensor of the chunk's shape and the tensor's dtype.

**Per-rank metadata.**  ``dcp.save(..., use_collectives=False)`` has each rank plan alone
and write ``__{rank}.metadata`` listing only its own items (``__{rank}_{n}.distcp``).
torch's loader never merges them: it reads ``.metadata`` when there is one, else the
reading rank's own ``__{rank}.metadata`` (rank 0 in a single process, which is what
``dcp.load`` without a process group and ``dcp_to_torch_save`` read).  ptfile reads what a
single process reads: ``.metadata``, else ``__0.metadata``.  As any rank may read its own
file, every rank's metadata is read and checked too (its chunks, its items, its pickled
values run dry), and a name two ranks describe as different things (a tensor and a value,
or two dtypes or global shapes) is refused: what the checkpoint holds would depend on who
reads it.  Two ranks may store different values under one name (each saved its own
state); ptfile gives rank 0's.  A rank whose chunks do not cover its tensors (a DTensor
saved without coordination holds only its own shard) is refused, where torch would leave
the rest of the tensor as it was.  Per-rank files beside ``.metadata`` are read by torch only
if ``.metadata`` fails to load; a scan judges their pickles anyway.

**Safetensors storage.**  ``FileSystemWriter(serialization_format=SAFETENSORS)`` writes each
``.distcp`` file as its non-tensor items followed by one safetensors blob, while ``.metadata``
places every tensor at the blob's start with the tensor's byte count as length.
torch's ``FileSystemReader`` hands that range to ``torch.load``, which fails, so such folders
have no reading to match: their tensor items are refused (``invalid`` in a scan), the values
before them still judged.  ``HuggingFaceStorageWriter(save_distributed=True)`` writes one
``shard-{rank}-model-{i}-of-{n}.safetensors`` per rank and no metadata; each file's header
metadata ``DCP_SHARDING_INFO`` (JSON ``{fqn: {"saved_offsets": [...]}}``) places its tensors
in the global tensor.  ``HuggingFaceStorageReader`` merges every ``*.safetensors`` file of
the folder into chunks; ptfile does the same (a tensor's global shape reaches the end of its
farthest chunk), reading each header with :func:`ptfile.formats.stformat.read_header`.  A folder
of such files without a ``.metadata`` or a shard index opens this way; its chunks must
agree on the dtype (torch would cast them to whichever file it listed first) and cover the
tensor exactly once, like a ``.metadata``'s.

**Limits.**  :data:`MAX_METADATA_BYTES` bounds each metadata file, :data:`MAX_RANK_FILES` the
number of per-rank metadata files and of safetensors files; :data:`MAX_GRID_CELLS` bounds
the coverage check (the grid a tensor's chunk boundaries cut it into), :data:`MAX_DIMS` a
tensor's dimensions.  Items written through stream transforms are not read.

Every layout is listed and read through :func:`ptfile.io.folders.folders_for`, so a DCP
folder behind an fsspec URL opens as one on this machine does.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import (
    CheckpointNotFoundError,
    CorruptFileError,
    LimitExceededError,
    PtfileError,
    UnsupportedFormatError,
)
from ..io.folders import folders_for
from ..io.open import open_source
from ..io.slicing import Placement
from ..io.source import MappedSource, SliceSource, Source
from ..pickle.values import Global, Record
from ..policy import allowlist
from ..tensors.dtypes import DtypeInfo, by_numpy
from ..tensors.rebuild import TorchDtype
from ..tensors.special import Layout
from .handle import Handle
from .loader import Checkpoint, RawPickle, TensorInfo
from .sharded import is_plain_file_name
from .stformat import read_header

__all__ = ["DcpCheckpoint", "SliceSource", "MetadataPickle", "is_dcp",
           "METADATA_FILE", "MAX_METADATA_BYTES", "MAX_RANK_FILES", "metadata_files", "members"]

#: The metadata file a DCP folder is recognized by (``filesystem._metadata_fn``).
METADATA_FILE = ".metadata"
#: Per-rank metadata of a save without coordination (``FileSystemWriter._get_metadata_path(rank)``).
RANK_METADATA_FILE = re.compile(r"__(0|[1-9][0-9]*)\.metadata")
#: What a single process reads when there is no ``.metadata`` (``_DistWrapper.rank`` without a group).
FIRST_RANK_METADATA = "__0.metadata"
#: Suffix of the files ``HuggingFaceStorageReader`` merges (``_hf_utils.SUFFIX``).
SAFETENSORS_SUFFIX = ".safetensors"
#: Header metadata key placing a safetensors file's tensors in the global ones (``_hf_utils.CUSTOM_METADATA_KEY``).
SHARDING_INFO_KEY = "DCP_SHARDING_INFO"
#: Where a chunk starts, per tensor in ``DCP_SHARDING_INFO`` (``_hf_utils.SAVED_OFFSETS_KEY``).
SAVED_OFFSETS_KEY = "saved_offsets"
#: Suffix of the item files torch's FileSystemWriter writes.
ITEM_SUFFIX = ".distcp"
#: ``.metadata`` lists every chunk of every rank, ~250 bytes each: 1 GiB is millions of chunks.
MAX_METADATA_BYTES = 1 << 30
#: Coverage is checked on the grid the chunk boundaries cut a tensor into (one byte per cell);
#: a grid partition has one cell per chunk, so only scattered hostile chunks come near this.
MAX_GRID_CELLS = 1 << 24
#: numpy's limit on dimensions (NPY_MAXDIMS in numpy 2): an array of more cannot be made.
MAX_DIMS = 64
#: One per-rank metadata file (or safetensors file) per rank: far more ranks than any job runs.
MAX_RANK_FILES = 1 << 16

METADATA_MODULE = "torch.distributed.checkpoint.metadata"
FILESYSTEM_MODULE = "torch.distributed.checkpoint.filesystem"
#: The dataclasses ``.metadata`` holds: plain data, created by NEWOBJ and filled by BUILD.
DATA_CLASSES = frozenset(
    [(METADATA_MODULE, name) for name in ("Metadata", "TensorStorageMetadata", "TensorProperties",
                                          "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                                          "StorageMeta")]
    + [(FILESYSTEM_MODULE, "_StorageInfo")]
)
#: The only tensor layout DCP saves chunks of.
STRIDED = Layout("strided")


def is_dcp(src: Any) -> bool:
    """A folder holding a DCP ``.metadata`` file, per-rank metadata, or DCP's safetensors shards
    (on this machine or behind a URL)."""
    if not isinstance(src, (str, os.PathLike)):
        return False
    folder = os.fspath(src)
    if not folders_for(folder).is_dir(folder):
        return False
    try:
        return bool(metadata_files(folder)) or is_safetensors_dcp(folder)
    except LimitExceededError:
        return True  # opening or scanning it reports the limit


def members(folder: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` (files of a DCP folder) a scan of the folder covers, by the names torch's
    writers give them: metadata and ``.distcp`` files beside metadata, else the safetensors shards.
    The folder's metadata is looked for once, however many names are asked about."""
    suffix = ITEM_SUFFIX if metadata_files(folder) else SAFETENSORS_SUFFIX
    return {name for name in names
            if name == METADATA_FILE or RANK_METADATA_FILE.fullmatch(name) or name.endswith(suffix)}


def metadata_files(folder: str) -> list[str]:
    """The metadata files torch's loader may read: ``.metadata`` alone if present (it takes
    precedence), else every ``__{rank}.metadata`` by rank, rank 0's first."""
    folders = folders_for(folder)
    if folders.is_file(folders.join(folder, METADATA_FILE)):
        return [METADATA_FILE]
    return rank_metadata_files(folder)


def rank_metadata_files(folder: str) -> list[str]:
    """Every ``__{rank}.metadata`` of the folder, by rank."""
    folders = folders_for(folder)
    matches = [match for name in folders.names(folder) if (match := RANK_METADATA_FILE.fullmatch(name))]
    if len(matches) > MAX_RANK_FILES:  # before each is asked whether it is a file (a request behind a URL)
        raise LimitExceededError(f"{folder}: {len(matches)} per-rank metadata files, over the limit of {MAX_RANK_FILES}")
    ranks = sorted((int(match[1]), match[0]) for match in matches if folders.is_file(folders.join(folder, match[0])))
    return [name for _, name in ranks]


def is_safetensors_dcp(folder: str) -> bool:
    """A folder without metadata or shard index where a safetensors file carries ``DCP_SHARDING_INFO``."""
    folders = folders_for(folder)
    names = folders.names(folder)
    if any(name.endswith(".index.json") for name in names):
        return False  # the writer's index (model.safetensors.index.json) opens it as shards
    files = [name for name in names if name.endswith(SAFETENSORS_SUFFIX)]
    return any(_has_sharding_info(folders.join(folder, name)) for name in files[:MAX_RANK_FILES])


def _has_sharding_info(path: str) -> bool:
    """Whether a file's checked safetensors header has ``DCP_SHARDING_INFO`` (False if it has no valid header)."""
    if not folders_for(path).is_file(path):
        return False
    try:
        return SHARDING_INFO_KEY in _header(path)[1]
    except PtfileError:
        return False


def _header(path: str) -> tuple[dict, dict[str, str]]:
    """A safetensors file's checked header (:func:`ptfile.formats.stformat.read_header`): entries and metadata."""
    source = open_source(path, mmap_file=False)
    try:
        return read_header(source)
    finally:
        source.close()


def is_data_class(module: str, name: str) -> bool:
    return (module, name) in DATA_CLASSES


# -- byte sources ----------------------------------------------------------------


# -- .metadata -------------------------------------------------------------------


class MetadataPickle(RawPickle):
    """``.metadata``: one plain pickle whose DCP dataclasses are data in this container only."""

    format = "dcp-metadata"

    def inert_classes(self, module: str, name: str) -> bool:
        return is_data_class(module, name)


@dataclass(frozen=True)
class Item:
    """One ``torch.save`` blob: a plain file name of the folder and a byte range of it."""

    file: str
    offset: int
    length: int

    def __str__(self) -> str:
        return f"{self.file}[{self.offset}:{self.offset + self.length}]"


@dataclass(frozen=True)
class Chunk:
    """A box of a tensor: where it starts in each dimension, how far it reaches, where it is stored."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    item: Item

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes, strict=True))


@dataclass(frozen=True)
class TensorEntry:
    """A tensor of the checkpoint: global dtype and shape, and the chunks it is stored in."""

    dtype: DtypeInfo
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]
    requires_grad: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def numpy(self) -> np.dtype:
        if self.dtype.numpy is None:
            raise UnsupportedFormatError(f"numpy has no type for torch.{self.dtype.torch_name}")
        return self.dtype.numpy


@dataclass
class DcpLayout:
    """What ``.metadata`` says, checked: tensors, non-tensor values, where each goes."""

    tensors: dict[str, TensorEntry]
    values: dict[str, Item]  # BYTE_IO items: fqn -> the blob saving the object
    order: list[str]  # state_dict_metadata order, which is the order torch rebuilds the state dict in
    paths: dict[str, tuple]  # fqn -> path in the nested state dict (planner_data)
    items: list[Item]  # every item storage_data lists, used or not
    version: str | None
    raw: bool = False  # items hold a chunk's bytes (safetensors data), not torch.save blobs


def _what(value: Any) -> str:
    return value.cls.path if type(value) is Record else type(value).__name__


def _state(value: Any, name: str, module: str = METADATA_MODULE) -> Any:
    """The BUILD state of a record of ``module.name``."""
    if type(value) is not Record or value.cls != Global(module, name):
        raise CorruptFileError(f"{METADATA_FILE}: expected a {name}, found a {_what(value)}")
    if value.args or value.items or value.listitems:
        raise CorruptFileError(f"{METADATA_FILE}: a {name} with constructor arguments or items")
    return value.state


def _fields(value: Any, name: str, module: str = METADATA_MODULE) -> dict:
    state = _state(value, name, module)
    if type(state) is not dict:
        raise CorruptFileError(f"{METADATA_FILE}: a {name} whose state is a {type(state).__name__}, not its fields")
    return state


def _dims(value: Any, what: str) -> tuple[int, ...]:
    """A ``torch.Size`` (read as a tuple) of non-negative ints."""
    if type(value) is not tuple or not all(type(d) is int and d >= 0 for d in value):
        raise CorruptFileError(f"{METADATA_FILE}: {what} is {value!r:.60}, not a tuple of non-negative ints")
    return value


def _item(info: Any) -> Item:
    fields = _fields(info, "_StorageInfo", FILESYSTEM_MODULE)
    name, offset, length = fields.get("relative_path"), fields.get("offset"), fields.get("length")
    if not is_plain_file_name(name):
        raise CorruptFileError(f"{METADATA_FILE}: item file {name!r:.80} is not a plain file name of the folder")
    if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        raise CorruptFileError(f"{METADATA_FILE}: item of {name!r} has offset {offset!r:.30} and length {length!r:.30}")
    if fields.get("transform_descriptors"):
        raise UnsupportedFormatError(f"{METADATA_FILE}: item {name}@{offset} was written through stream transforms "
                                     f"{fields['transform_descriptors']!r:.60}, which ptfile does not read")
    return Item(name, offset, length)


def _items(storage_data: Any) -> dict[tuple[str, tuple | None], Item]:
    """``(fqn, chunk offsets or None) -> item`` from ``storage_data``."""
    if type(storage_data) is not dict:
        raise CorruptFileError(f"{METADATA_FILE}: storage_data is a {type(storage_data).__name__}, not a dict")
    found: dict[tuple[str, tuple | None], Item] = {}
    for index, info in storage_data.items():
        fields = _fields(index, "MetadataIndex")
        fqn, offset = fields.get("fqn"), fields.get("offset")
        if type(fqn) is not str:
            raise CorruptFileError(f"{METADATA_FILE}: a MetadataIndex whose fqn is {fqn!r:.40}")
        key = (fqn, None if offset is None else _dims(offset, f"offset of {fqn!r}"))
        if key in found:
            raise CorruptFileError(f"{METADATA_FILE}: two items for {fqn!r} at offset {offset!r:.40}")
        found[key] = _item(info)
    return found


def _properties(value: Any, fqn: str) -> tuple[DtypeInfo, bool]:
    """dtype and requires_grad of ``TensorProperties`` (a tuple state since torch 2.1, fields before)."""
    state = _state(value, "TensorProperties")
    if type(state) is tuple and len(state) == 5:
        dtype, layout, requires_grad = state[0], state[1], state[2]
    elif type(state) is dict:
        dtype, layout, requires_grad = state.get("dtype"), state.get("layout", STRIDED), state.get("requires_grad")
    else:
        raise CorruptFileError(f"{METADATA_FILE}: TensorProperties of {fqn!r} has a state of {_what(state)}")
    if type(dtype) is not TorchDtype or dtype.info is None:
        raise CorruptFileError(f"{METADATA_FILE}: {fqn!r} has dtype {dtype!r:.40}, not a torch dtype")
    if layout != STRIDED:
        raise UnsupportedFormatError(f"{METADATA_FILE}: {fqn!r} has layout {layout!r:.40}; only strided chunks are read")
    return dtype.info, requires_grad is True


def _tensor(fqn: str, value: Any, items: dict) -> TensorEntry:
    fields = _fields(value, "TensorStorageMetadata")
    dtype, requires_grad = _properties(fields.get("properties"), fqn)
    shape = _dims(fields.get("size"), f"the size of {fqn!r}")
    raw_chunks = fields.get("chunks")
    if type(raw_chunks) is not list:
        raise CorruptFileError(f"{METADATA_FILE}: the chunks of {fqn!r} are not a list")
    chunks = []
    for raw in raw_chunks:
        box = _fields(raw, "ChunkStorageMetadata")
        offsets = _dims(box.get("offsets"), f"a chunk offset of {fqn!r}")
        sizes = _dims(box.get("sizes"), f"a chunk size of {fqn!r}")
        item = items.get((fqn, offsets))
        if item is None:
            raise CorruptFileError(f"{METADATA_FILE}: the chunk of {fqn!r} at {offsets} has no item in storage_data")
        chunks.append(Chunk(offsets, sizes, item))
    entry = TensorEntry(dtype, shape, tuple(chunks), requires_grad)
    check_chunks(fqn, entry)
    return entry


def check_chunks(fqn: str, entry: TensorEntry) -> None:
    """Every chunk inside the shape, no two overlapping, all of them covering every element once."""
    shape = entry.shape
    if len(shape) > MAX_DIMS:
        raise LimitExceededError(f"{fqn}: {len(shape)} dimensions, over the limit of {MAX_DIMS}")
    for chunk in entry.chunks:
        if len(chunk.offsets) != len(shape) or len(chunk.sizes) != len(shape):
            raise CorruptFileError(f"{fqn}: chunk at {chunk.offsets} of size {chunk.sizes} does not have "
                                   f"the {len(shape)} dimensions of {shape}")
        if any(o + s > d for o, s, d in zip(chunk.offsets, chunk.sizes, shape, strict=True)):
            raise CorruptFileError(f"{fqn}: chunk at {chunk.offsets} of size {chunk.sizes} reaches outside {shape}")
        if chunk.numel * entry.dtype.itemsize > chunk.item.length:
            raise CorruptFileError(f"{fqn}: chunk at {chunk.offsets} needs {chunk.numel * entry.dtype.itemsize} bytes "
                                   f"but its item {chunk.item} holds {chunk.item.length}")
    boxes = [c for c in entry.chunks if c.numel]
    # The chunk boundaries cut the tensor into a grid of cells, each inside or outside every chunk;
    # marking each chunk's cells finds an overlap at the first cell marked twice, a hole at a cell
    # never marked, and visits each cell at most once before that.
    cuts = [sorted({0, size, *(c.offsets[d] for c in boxes), *(c.offsets[d] + c.sizes[d] for c in boxes)})
            for d, size in enumerate(shape)]
    cells = math.prod(len(cut) - 1 for cut in cuts)
    if cells > MAX_GRID_CELLS:
        raise LimitExceededError(f"{fqn}: its chunks cut it into {cells} cells, over the limit of {MAX_GRID_CELLS}")
    marked = np.zeros([len(cut) - 1 for cut in cuts], dtype=bool)
    for chunk in boxes:
        where = tuple(slice(bisect.bisect_left(cut, o), bisect.bisect_left(cut, o + s))
                      for cut, o, s in zip(cuts, chunk.offsets, chunk.sizes, strict=True))
        if marked[where].any():
            other = next(c for c in boxes if c is not chunk and _intersect(c, chunk))
            raise CorruptFileError(f"{fqn}: chunks at {other.offsets} and {chunk.offsets} overlap")
        marked[where] = True
    if not marked.all():
        covered = sum(c.numel for c in boxes)
        raise CorruptFileError(f"{fqn}: its chunks cover {covered} of its {entry.numel} elements")


def _intersect(a: Chunk, b: Chunk) -> bool:
    return all(bo < ao + az and ao < bo + bz
               for ao, az, bo, bz in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True))


def _paths(planner_data: Any, order: list[str]) -> dict[str, tuple]:
    """planner_data's path of each fqn, checked: strs and list indices below the number of entries."""
    if planner_data is None:
        return {}
    if type(planner_data) is not dict:
        raise CorruptFileError(f"{METADATA_FILE}: planner_data is a {type(planner_data).__name__}, not a dict")
    paths = {}
    for fqn in order:
        path = planner_data.get(fqn)
        if path is None:
            continue
        # A list is flattened element by element, so an index is always below the number of entries.
        if type(path) is not tuple or not path or not all(
                type(k) is str or (type(k) is int and 0 <= k < len(order)) for k in path):
            raise CorruptFileError(f"{METADATA_FILE}: planner_data path of {fqn!r} is {path!r:.60}")
        paths[fqn] = path
    return paths


def parse_layout(tree: Any) -> DcpLayout:
    """The checked layout of a ``Metadata`` record."""
    fields = _fields(tree, "Metadata")
    entries = fields.get("state_dict_metadata")
    if type(entries) is not dict:
        raise CorruptFileError(f"{METADATA_FILE}: state_dict_metadata is not a dict")
    items = _items(fields.get("storage_data"))
    tensors: dict[str, TensorEntry] = {}
    values: dict[str, Item] = {}
    for fqn, value in entries.items():
        if type(fqn) is not str:
            raise CorruptFileError(f"{METADATA_FILE}: state_dict_metadata key {fqn!r:.40} is not a str")
        if type(value) is Record and value.cls == Global(METADATA_MODULE, "BytesStorageMetadata"):
            _state(value, "BytesStorageMetadata")
            item = items.get((fqn, None))
            if item is None:
                raise CorruptFileError(f"{METADATA_FILE}: the value {fqn!r} has no item in storage_data")
            values[fqn] = item
        else:
            tensors[fqn] = _tensor(fqn, value, items)
    order = list(entries)
    version = fields.get("version")
    return DcpLayout(tensors, values, order, _paths(fields.get("planner_data"), order),
                     list(dict.fromkeys(items.values())), version if type(version) is str else None)


def metadata_checkpoint(folder: str, *, records: bool, allow: allowlist.Allow | None = None,
                        name: str = METADATA_FILE) -> Checkpoint:
    """A metadata file opened as a checkpoint of one plain pickle (its bytes are read at once)."""
    folders = folders_for(folder)
    path = folders.join(folder, name)
    source = MappedSource(folders.read_small(path, MAX_METADATA_BYTES, f"DCP {name} file"), path)
    return Checkpoint(source, copy=True, records=records, container=MetadataPickle(source), allow=allow)


def read_metadata(folder: str, *, records: bool = False, allow: allowlist.Allow | None = None,
                  name: str = METADATA_FILE) -> Any:
    """The ``Metadata`` record of a DCP folder, run through the engine and judged (raises if unsafe)."""
    with metadata_checkpoint(folder, records=records, allow=allow, name=name) as checkpoint:
        return checkpoint.run(materialize=False)


def read_layouts(folder: str, *, records: bool = False, allow: allowlist.Allow | None = None) -> list[DcpLayout]:
    """Every layout a reader of the folder may see, the one a single process reads first.

    ``.metadata`` alone; else each ``__{rank}.metadata``, checked to agree with each other.
    """
    names = metadata_files(folder)
    if not names:
        return [safetensors_layout(folder)]
    if names == [METADATA_FILE]:
        _judge_fallback_metadata(folder, records, allow)
    if names[0] != METADATA_FILE and names[0] != FIRST_RANK_METADATA:
        raise CorruptFileError(f"{folder}: per-rank metadata without {FIRST_RANK_METADATA} (found {names[0]}); "
                               "a single process reads that file and fails")
    layouts = [_parse_named(folder, name, records, allow) for name in names]
    for name, layout in zip(names[1:], layouts[1:], strict=True):
        check_ranks_agree(layouts[0], layout, names[0], name)
    return layouts


def _judge_fallback_metadata(folder: str, records: bool, allow: allowlist.Allow | None) -> None:
    """Run dry the per-rank metadata beside ``.metadata``: torch's loader unpickles its rank's file
    when ``.metadata`` fails to load, so a folder whose fallback names an unsafe global is refused
    (as its scan is not clean).  A file that is only damaged matters only then, and is let be."""
    try:
        names = rank_metadata_files(folder)
    except LimitExceededError:
        return  # the scan notes it; torch reads these files only if .metadata fails
    for name in names:
        try:
            read_metadata(folder, records=records, allow=allow, name=name)
        except (CorruptFileError, LimitExceededError):
            continue


def _parse_named(folder: str, name: str, records: bool, allow: allowlist.Allow | None) -> DcpLayout:
    tree = read_metadata(folder, records=records, allow=allow, name=name)
    try:
        return parse_layout(tree)
    except CorruptFileError as exc:
        if name == METADATA_FILE:
            raise
        raise CorruptFileError(f"{name}: {exc}") from None


def check_ranks_agree(first: DcpLayout, other: DcpLayout, first_name: str, other_name: str) -> None:
    """Two ranks' metadata describe each name they share as the same thing: kind, dtype, global shape."""
    for fqn in other.order:
        if fqn in first.tensors and fqn in other.tensors:
            a, b = first.tensors[fqn], other.tensors[fqn]
            if (a.dtype, a.shape) != (b.dtype, b.shape):
                raise CorruptFileError(f"{fqn}: {first_name} describes a {a.dtype.torch_name} {a.shape} tensor, "
                                       f"{other_name} a {b.dtype.torch_name} {b.shape}; which one is read depends "
                                       "on the reading rank")
        elif (fqn in first.tensors and fqn in other.values) or (fqn in first.values and fqn in other.tensors):
            raise CorruptFileError(f"{fqn}: a tensor in one of {first_name} and {other_name}, a value in the other; "
                                   "which one is read depends on the reading rank")
        if fqn in first.paths and fqn in other.paths and first.paths[fqn] != other.paths[fqn]:
            raise CorruptFileError(f"{fqn}: {first_name} and {other_name} place it at different paths "
                                   f"{first.paths[fqn]!r:.40} and {other.paths[fqn]!r:.40}")


# -- safetensors storage ---------------------------------------------------------


def safetensors_files(folder: str) -> list[str]:
    """The files ``HuggingFaceStorageReader.read_metadata`` merges: every ``*.safetensors`` of the folder."""
    folders = folders_for(folder)
    names = [name for name in folders.names(folder) if name.endswith(SAFETENSORS_SUFFIX)]
    if len(names) > MAX_RANK_FILES:
        raise LimitExceededError(f"{folder}: {len(names)} safetensors files, over the limit of {MAX_RANK_FILES}")
    for name in names:
        if not folders.is_file(folders.join(folder, name)):
            raise CorruptFileError(f"{folder}: {name!r} is not a plain file, and torch would open it as one")
    return names


def safetensors_layout(folder: str) -> DcpLayout:
    """The layout ``HuggingFaceStorageReader`` builds: each file's tensors, placed by ``DCP_SHARDING_INFO``."""
    names = safetensors_files(folder)
    if not names:
        raise CorruptFileError(f"{folder}: no {METADATA_FILE}, per-rank metadata or safetensors files")
    parts: dict[str, list[tuple[np.dtype, Chunk]]] = {}
    for name in names:
        for fqn, dtype, chunk in _safetensors_chunks(folder, name):
            parts.setdefault(fqn, []).append((dtype, chunk))
    tensors = {fqn: _merged_tensor(fqn, found) for fqn, found in parts.items()}
    items = [chunk.item for entry in tensors.values() for chunk in entry.chunks]
    return DcpLayout(tensors, {}, list(tensors), {}, items, None, raw=True)


def _safetensors_chunks(folder: str, name: str) -> list[tuple[str, np.dtype, Chunk]]:
    entries, metadata = _header(folders_for(folder).join(folder, name))
    info = _sharding_info(metadata, name)
    found = []
    for fqn, entry in entries.items():
        if info is None:
            offsets = (0,) * len(entry.shape)
        else:
            saved = info.get(fqn)
            offsets = saved.get(SAVED_OFFSETS_KEY) if type(saved) is dict else None
            if type(offsets) is not list or not all(type(o) is int and o >= 0 for o in offsets):
                raise CorruptFileError(f"{name}: {SHARDING_INFO_KEY} gives {fqn!r} no list of saved offsets")
            if len(offsets) != len(entry.shape):
                raise CorruptFileError(f"{name}: {fqn!r} has {len(entry.shape)} dimensions but "
                                       f"{len(offsets)} saved offsets")
        found.append((fqn, entry.dtype, Chunk(tuple(offsets), entry.shape, Item(name, entry.offset, entry.nbytes))))
    return found


def _sharding_info(metadata: dict[str, str], name: str) -> dict | None:
    """``DCP_SHARDING_INFO`` as torch reads it: only when present and non-empty."""
    text = metadata.get(SHARDING_INFO_KEY)
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise CorruptFileError(f"{name}: {SHARDING_INFO_KEY} is not valid JSON: {exc}") from None
    if type(info) is not dict:
        raise CorruptFileError(f"{name}: {SHARDING_INFO_KEY} is not a JSON object")
    return info


def _merged_tensor(fqn: str, found: list[tuple[np.dtype, Chunk]]) -> TensorEntry:
    """One tensor from its chunks in every file: one dtype, a global shape reaching the farthest chunk."""
    dtypes = {dtype for dtype, _ in found}
    if len(dtypes) > 1:
        raise CorruptFileError(f"{fqn}: its chunks are stored as {sorted(d.name for d in dtypes)}; torch casts them "
                               "all to the dtype of whichever file it lists first")
    info = by_numpy(found[0][0])
    if info is None:
        raise UnsupportedFormatError(f"{fqn}: no torch dtype for {found[0][0].name}")
    chunks = tuple(chunk for _, chunk in found)
    if len({len(c.sizes) for c in chunks}) > 1:
        raise CorruptFileError(f"{fqn}: its chunks have different numbers of dimensions")
    shape = tuple(max(c.offsets[d] + c.sizes[d] for c in chunks) for d in range(len(chunks[0].sizes)))
    entry = TensorEntry(info, shape, chunks, requires_grad=False)
    check_chunks(fqn, entry)
    return entry


# -- the lazy handle -------------------------------------------------------------


class DcpCheckpoint(Handle):
    """A DCP folder with the lazy-handle API of ``ptfile.open``.

    ``keys()`` lists the tensors, ``info(key)`` gives a tensor's global dtype and shape,
    ``handle[key]`` assembles a tensor from its chunks (a tensor stored as one chunk is,
    with ``mmap=True``, a read-only view of the file; one assembled from several is a new
    array) or reads a non-tensor value; ``value_names()`` lists the non-tensor values;
    ``load()`` rebuilds the nested state dict torch saved.  Each item file is opened on
    first use and stays open until :meth:`close`.
    """

    format = "dcp"

    def __init__(self, src: Any, *, mmap: bool = True, records: bool = False,
                 allow: allowlist.Allow | None = None) -> None:
        self.folder = os.fspath(src)
        self.name = self.folder
        self._folders = folders_for(self.folder)
        self._mmap = mmap
        self._records = records
        self._allow = allow
        self._sources: dict[str, Source] = {}
        self._placements: dict[str, Placement | None] = {}
        layouts = read_layouts(self.folder, records=records, allow=allow)
        self.layout = layouts[0]  # what a single process reads; every rank's file is checked as well
        try:
            self._check_items([item for layout in layouts for item in layout.items])  # opens the item files
            for layout in layouts:
                self._judge_values(layout)
        except BaseException:
            self.close()
            raise

    def _judge_values(self, layout: DcpLayout) -> None:
        """Run every non-tensor item dry now: DCP's loader unpickles them with ``torch.load(weights_only=False)``.

        Tensors are read (and judged) when asked for, as DCP reads them with ``weights_only=True``;
        a value is judged at once, so that a handle that opens is one whose every reader is safe.
        """
        for item in layout.values.values():
            blob = SliceSource(self._file(item.file), item.offset, item.length, self._folders.join(self.folder, str(item)))
            Checkpoint(blob, copy=False, records=self._records, allow=self._allow).run(materialize=False)

    def _check_items(self, items: list[Item]) -> None:
        """Every item inside an existing file of the folder."""
        sizes: dict[str, int] = {}
        for item in items:
            if item.file not in sizes:
                try:
                    sizes[item.file] = self._file(item.file).size
                except CheckpointNotFoundError:
                    raise CorruptFileError(f"{self.folder}: item {item} lies in a missing file") from None
            if item.offset + item.length > sizes[item.file]:
                raise CorruptFileError(f"{self.folder}: item {item} reaches past the end of the "
                                       f"{sizes[item.file]}-byte file")

    @property
    def version(self) -> str | None:
        return self.layout.version

    # -- mapping ------------------------------------------------------------------

    def _names(self) -> Collection[str]:
        """The tensors' fully qualified names (``model.w``), in the order torch saved them."""
        return self.layout.tensors.keys()

    def value_names(self) -> list[str]:
        """The non-tensor values' names (``step``, ``extra.lr``)."""
        return list(self.layout.values)

    def _tree(self) -> dict:
        """The nested state dict with every tensor described by its :class:`TensorInfo`, values read."""
        return self.load(tensor=self._info)

    def entry(self, key: str) -> TensorEntry:
        try:
            return self.layout.tensors[key]
        except KeyError:
            raise KeyError(f"no tensor named {key!r} in {self.folder}") from None

    def _info(self, key: str) -> TensorInfo:
        """Global dtype and shape of a tensor, as one contiguous tensor; nothing is read."""
        entry = self.entry(key)
        numpy = entry.dtype.numpy
        strides = _contiguous(entry.shape)
        nbytes = entry.numel * entry.dtype.itemsize
        return TensorInfo(
            dtype=numpy.name if numpy is not None else entry.dtype.torch_name, torch_dtype=entry.dtype.torch_name,
            shape=entry.shape, strides=strides, offset=0, nbytes=nbytes, storage=key, storage_nbytes=nbytes,
            location="cpu", parameter=False, is_contiguous=True,
        )

    def _tensor(self, key: str) -> np.ndarray:
        return self.assemble(key)

    def value(self, path: str) -> Any:
        """A non-tensor value by its DCP name (``step``, ``extra.lr``), or any value of the tree."""
        item = self.layout.values.get(path)
        if item is not None:
            self._check_open()
            return self.read_item(item)
        return super().value(path)

    def assemble(self, key: str, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor ``key``: its single chunk as read, or every chunk copied into ``out`` (or a new array)."""
        entry = self.entry(key)
        if out is None and len(entry.chunks) == 1:
            return self._chunk(key, entry, entry.chunks[0])  # checked to cover the whole tensor
        if out is None:
            out = np.empty(entry.shape, entry.numpy)
        elif out.shape != entry.shape or out.dtype != entry.numpy:
            raise ValueError(f"{key}: cannot assemble a {entry.numpy.name} {entry.shape} into {out.dtype} {out.shape}")
        for chunk in entry.chunks:
            out[chunk.slices] = self._chunk(key, entry, chunk)
        return out

    def _chunk(self, key: str, entry: TensorEntry, chunk: Chunk) -> np.ndarray:
        if self.layout.raw:  # safetensors data: the header gave its dtype and shape, checked against the file
            raw = self._file(chunk.item.file).array(chunk.item.offset, chunk.item.length, f"{key} at {chunk.offsets}",
                                                    copy=not self._mmap)
            return raw.view(entry.numpy).reshape(chunk.sizes)
        value = self.read_item(chunk.item)
        if not isinstance(value, np.ndarray):
            raise CorruptFileError(f"{key}: item {chunk.item} of the chunk at {chunk.offsets} holds a "
                                   f"{_what(value)}, not a tensor")
        if value.shape != chunk.sizes or value.dtype != entry.numpy:
            raise CorruptFileError(f"{key}: item {chunk.item} holds a {value.dtype.name} {value.shape}, not the "
                                   f"{entry.numpy.name} {chunk.sizes} chunk at {chunk.offsets}")
        return value if type(value) is np.ndarray else value.view(np.ndarray)

    def read_item(self, item: Item) -> Any:
        """What one item's ``torch.save`` blob holds, read as any checkpoint is."""
        return self._item_checkpoint(item).run(materialize=True)

    def _item_checkpoint(self, item: Item) -> Checkpoint:
        blob = SliceSource(self._file(item.file), item.offset, item.length, self._folders.join(self.folder, str(item)))
        return Checkpoint(blob, copy=not self._mmap, records=self._records, allow=self._allow)

    def _placement(self, key: str) -> Placement | None:
        """A tensor saved as one chunk: where its item's storage lies; one of several chunks is assembled whole."""
        if key in self._placements:
            return self._placements[key]
        entry = self.entry(key)
        place = None
        if len(entry.chunks) == 1 and self.layout.raw:  # safetensors data: the chunk's bytes, row-major
            item = entry.chunks[0].item
            place = Placement(self._file(item.file), item.offset, item.length, entry.numpy, entry.shape,
                              _contiguous(entry.shape), 0)
        elif len(entry.chunks) == 1:
            chunk = entry.chunks[0]
            checkpoint = self._item_checkpoint(chunk.item)
            place = checkpoint.placement(checkpoint.run(materialize=False))  # judged as read_item judges it
            if place is not None and (place.shape != chunk.sizes or place.dtype != entry.numpy):
                place = None  # read whole, which says what is wrong with it
        self._placements[key] = place  # the item's pickle runs once, not once per slice
        return place

    def _file(self, name: str) -> Source:
        source = self._sources.get(name)
        if source is None:
            source = self._sources[name] = open_source(self._folders.join(self.folder, name), mmap_file=self._mmap)
        return source

    def load(self, tensor: Callable[[str], Any] | None = None) -> dict:
        """The nested state dict, rebuilt from planner_data as torch rebuilds it.

        ``tensor(key)`` gives each tensor (default: :meth:`__getitem__`).
        """
        get = tensor if tensor is not None else self.__getitem__
        root: dict = {}
        for fqn in self.layout.order:
            value = get(fqn) if fqn in self.layout.tensors else self.read_item(self.layout.values[fqn])
            path = self.layout.paths.get(fqn)
            if path is None:
                root[fqn] = value
            else:
                set_element(root, path, value, fqn)
        return root

    def _close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def __enter__(self) -> DcpCheckpoint:
        return self


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, in elements, of a tensor of ``shape``."""
    return tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))


def set_element(root: dict, path: tuple, value: Any, fqn: str) -> None:
    """``torch.distributed.checkpoint._traverse.set_element``, refusing paths through a value."""
    node: Any = root
    for key, following in zip(path, path[1:], strict=False):  # each key with the one after it
        node = _child(node, key, {} if type(following) is str else [], fqn)
    _place(node, path[-1], value, fqn)


def _child(node: Any, key: Any, default: Any, fqn: str) -> Any:
    if type(node) is dict:
        child = node.setdefault(key, default)
    else:
        _place(node, key, None, fqn, keep=True)
        if node[key] is None:
            node[key] = default
        child = node[key]
    if type(child) not in (dict, list):
        raise CorruptFileError(f"{METADATA_FILE}: the path of {fqn!r} passes through a value")
    return child


def _place(node: Any, key: Any, value: Any, fqn: str, *, keep: bool = False) -> None:
    if type(node) is dict:
        node[key] = value
        return
    if type(node) is not list or type(key) is not int:
        raise CorruptFileError(f"{METADATA_FILE}: the path of {fqn!r} indexes a {type(node).__name__} with {key!r}")
    node.extend([None] * (key + 1 - len(node)))
    if not keep:
        node[key] = value
