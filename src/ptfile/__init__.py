"""ptfile: read, write, inspect and scan PyTorch ``.pt`` checkpoints without torch.

No code from a checkpoint ever runs: one restricted pickle engine, driven by one
allowlist of ptfile's own constructors, serves every reader.

>>> import ptfile
>>> state = ptfile.load("model.pt")                 # doctest: +SKIP
>>> with ptfile.open("model.pt") as ckpt:           # doctest: +SKIP
...     print(ckpt.keys(), ckpt.info("fc.weight"))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, Union

from .constants import Limits, Verdict, applying
from .errors import (
    CheckpointNotFoundError,
    CorruptFileError,
    FrameworkMissingError,
    LimitExceededError,
    PtfileError,
    RemoteReadError,
    UnsafeGlobalError,
    UnsupportedFormatError,
)
from .formats.handle import Handle, TensorInfo
from .pickle.values import Global, Parameter, Record
from .policy.allowlist import as_allow
from .tensors.metadata import AttributeDict
from .tensors.special import MetaTensor, NestedTensor, QuantizedTensor, SparseTensor, TensorSubclass

if TYPE_CHECKING:
    from .scanning.scanner import ScanResult

__version__ = "0.1.0"

__all__ = [
    "load",
    "open",
    "scan",
    "save",
    "save_sharded",
    "safe_open",
    "Checkpoint",
    "Handle",
    "TensorInfo",
    "ScanResult",
    "Record",
    "Global",
    "Parameter",
    "QuantizedTensor",
    "SparseTensor",
    "NestedTensor",
    "MetaTensor",
    "TensorSubclass",
    "AttributeDict",
    "Limits",
    "Verdict",
    "PtfileError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "UnsafeGlobalError",
    "LimitExceededError",
    "CheckpointNotFoundError",
    "FrameworkMissingError",
    "RemoteReadError",
]

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]
#: Third-party globals a caller accepts: patterns ``module.name`` or ``module.*``.
Allow = Union[Iterable[str], None]
#: A callback ``progress(done, total)`` that long writes call as they go (counts in bytes).
Progress = Union[Callable[[int, int], None], None]
Checkpoint = Handle


def load(src: Source, *, mmap: bool = True, records: bool = False, allow: Allow = None,
         framework: str = "numpy", limits: Limits | None = None) -> Any:
    """Read a whole checkpoint into Python objects and numpy arrays, running no code from it.

    Args:
        src: a path, URL, binary file object, or the file's bytes, in any format
            :func:`open` reads; safetensors, ``.npz``/``.npy`` files and shard folders or
            ``*.index.json`` load as one dict of every tensor (tensors a safetensors file
            written by ptfile stored as aliases come back as views, so ties hold); a
            ``torch.distributed.checkpoint`` folder loads as the nested state dict it saved.
        mmap: with True, tensors are read-only zero-copy views of the memory-mapped file
            (or of the bytes given); with False, they are writable arrays read in one pass:
            disjoint views of one buffer holding the file, freed when the last of them is
            (``array.copy()`` one to keep it alone).
        records: with True, instances of classes ptfile does not know (whole pickled
            models) and calls of globals outside the allowlist that are no known gadget
            (Enum members, namedtuples, custom ``__reduce__``) become inert :class:`Record`
            objects instead of an error.  Known code-execution gadgets are refused in every mode.
        allow: third-party globals to accept (``"module.name"`` or ``"module.*"``): their
            unknown-class and unknown-call uses come back as records even without
            ``records``, so that load succeeds exactly when ``scan(src, allow=allow)`` is
            clean.  A known code-execution gadget is never allowed.
        framework: ``"numpy"``, ``"pt"``/``"torch"``, ``"jax"``/``"flax"`` or ``"mlx"``: the
            type tensors come back as (see :mod:`ptfile.tensors.frameworks`); torch tensors view the
            arrays' memory, with storages, strides and parameters kept.
        limits: :class:`Limits` to read under, for a legitimate file past a default limit
            (``Limits(max_safetensors_header_bytes=200_000_000)``); every error a limit
            causes names the field to raise.  None keeps the defaults.

    Returns:
        The checkpoint's object tree: dicts (``OrderedDict`` with ``_metadata`` kept), lists,
        tuples, sets, scalars, strings, bytes, numpy arrays (:class:`Parameter` for
        parameters), numpy scalars, ``argparse.Namespace`` and records.

    Raises:
        PtfileError: for every malformed, unsupported or unsafe input, with the reason.
    """
    from .formats.opener import load_tree  # lazy: every format reader, kept off `import ptfile`

    with applying(limits):
        return load_tree(src, mmap=mmap, records=records, allow=allow, framework=framework)


def open(src: Source, *, mmap: bool = True, records: bool = False, allow: Allow = None,  # noqa: A001
         framework: str = "numpy", limits: Limits | None = None) -> Handle:
    """Open a checkpoint lazily: parse its directory and pickle, read tensors when asked.

    Every format ptfile reads (torch's zip, legacy and TorchScript files, safetensors,
    ``.npz``/``.npy``, a folder or ``*.index.json`` of shards, a
    ``torch.distributed.checkpoint`` folder, a folder holding one checkpoint file, any of
    them behind an fsspec URL) opens as one :class:`Handle`: a read-only mapping of tensor
    names to numpy arrays with ``info(key)`` (a :class:`TensorInfo`: dtype, shape, strides,
    sizes, storage, nothing read), ``get_slice(key)[...]``, ``metadata()``, ``tree`` and
    ``value(path)`` for non-tensor values, ``format`` and ``close()``/``with``.
    ``records``, ``allow``, ``framework`` and ``limits`` mean what they mean for :func:`load`
    (the handle keeps its limits for what it reads later);
    ``get_tensor(key, framework=...)`` and ``get_slice(key, framework=...)`` choose per call.

    Example:
        ```python
        with ptfile.open("model.pt") as ckpt:
            for key in ckpt.keys():
                print(key, ckpt.info(key).shape)
            weight = ckpt["fc.weight"]
        ```
    """
    from .formats.opener import open_handle  # lazy: every format reader, kept off `import ptfile`

    with applying(limits):
        return open_handle(src, mmap=mmap, records=records, allow=allow, framework=framework)


def safe_open(filename: Source, framework: str = "pt", device: Any = "cpu", *, limits: Limits | None = None) -> Handle:
    """safetensors' ``safe_open`` over every format ptfile reads.

    Code written for ``safetensors.safe_open(path, framework=..., device=...)`` reads a
    ``.pt`` or ``.bin`` file, a shard folder or index, a DCP folder, a safetensors or numpy
    file unchanged: ``keys()``, ``get_tensor(key)``, ``get_slice(key)[...]`` (with
    ``get_shape()``), ``metadata()`` and the context manager.  ``framework`` is ``"pt"``,
    ``"numpy"``, ``"jax"``/``"flax"`` or ``"mlx"``; ``device`` where tensors go (torch
    devices, JAX platforms).  No code from the file runs; files :func:`scan` does not
    call clean are refused.  ``limits`` means what it means for :func:`open`.

    Example:
        ```python
        with ptfile.safe_open("pytorch_model.bin", framework="pt") as f:
            weights = {key: f.get_tensor(key) for key in f.keys()}
        ```
    """
    from .formats.opener import open_handle  # lazy: every format reader, kept off `import ptfile`

    with applying(limits):
        return open_handle(filename, framework=framework, device=None if framework in ("numpy", "np") else device)


def save(obj: Any, dst: Union[str, os.PathLike[str], IO[bytes]], *, progress: Progress = None) -> None:
    """Write ``obj`` as a checkpoint that ``torch.load`` reads (``weights_only=True`` and ``mmap=True``).

    numpy arrays become tensors (:class:`Parameter` arrays become ``nn.Parameter``);
    arrays viewing the same memory share one storage with their offsets and strides;
    negative strides are copied, as torch has none.  The file is laid out and pickled
    exactly as ``torch.save`` lays out and pickles the same objects, so a file read with
    :func:`load` and saved again is the same checkpoint to torch.

    A path is written through a temporary file in the same folder and replaced only
    when complete; a file object is written from its current position.
    ``progress(bytes written, bytes to write)``, if given, is called as tensor data is written.

    Raises:
        PtfileError: naming the path in the tree (``model.layers.0.weight``) of a value
            that cannot be saved, before anything is written.
    """
    from .formats.writer import save as _save  # lazy: saving only, kept off `import ptfile`

    _save(obj, dst, progress=progress)


def save_sharded(state_dict: Any, folder: Union[str, os.PathLike[str]], max_shard_size: Union[int, str] = "5GB", *,
                 progress: Progress = None) -> list[str]:
    """Write a ``name -> array`` state dict as Hugging Face ``pytorch_model-0000k-of-0000N.bin`` shards.

    Shards are filled greedily in key order up to ``max_shard_size`` (bytes, or a string
    such as ``"5GB"``, ``"500MB"`` in decimal units, or ``"2GiB"``); tensors sharing a
    storage stay in one shard; a tensor larger than the limit gets a shard of its own.
    Several shards come with ``pytorch_model.bin.index.json``; a single one is written as
    ``pytorch_model.bin``.  Returns the names of the files written.  ``progress(bytes
    written, bytes to write)``, if given, is called as tensor data is written, over all shards.
    """
    from .formats.writer import save_sharded as _save_sharded  # lazy: saving only, kept off `import ptfile`

    return _save_sharded(state_dict, folder, max_shard_size, progress=progress)


def scan(src: Source, *, strict: bool = False, allow: Allow = None, verify: bool = False,
         limits: Limits | None = None) -> ScanResult:
    """Look for malicious content with the loader's own parser, without loading anything.

    Returns a :class:`ScanResult` whose ``verdict`` is, worst first,
    ``dangerous`` (a known code-execution gadget is named or called), ``unknown-call``
    (a global outside the allowlist is called: ``torch.load(weights_only=False)`` would
    run third-party code), ``invalid`` (could not be parsed to the end), ``unknown-class``
    (instances of classes ptfile does not know) or ``clean``, with every finding (global,
    level, how it was used, record and byte offset; for calls, how often and with what).
    ``strict`` grades unknown classes and calls as dangerous.  ``allow`` accepts named
    third-party globals as :func:`load` does; their findings become notes.  ``ptfile.load``
    refuses exactly the files this does not call clean (``records=True`` also accepts
    unknown classes and calls).  A scan reads the zip directory, the pickles and the small
    records beside them, never a tensor byte; ``verify=True`` also streams every storage
    record through a CRC-32 check (torch never checks one, so a mismatch is a note).
    ``limits`` (:class:`Limits`) raises limits as for :func:`load`; a file over one is ``invalid``,
    with a fault naming the field to raise.
    """
    from .scanning.scanner import scan as _scan  # lazy: scanning only, kept off `import ptfile`

    return _scan(src, strict=strict, allow=as_allow(allow), verify=verify, limits=limits)


def __getattr__(name: str) -> Any:
    """``ptfile.ScanResult``, imported on first use: the scanner is kept off ``import ptfile``."""
    if name == "ScanResult":
        from .scanning.scanner import ScanResult  # lazy: the scanner, kept off `import ptfile`

        return ScanResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
