"""The one table of globals a checkpoint may use, and the judge of what a pickle did.

Every GLOBAL a pickle names is looked up here by its exact ``(module, name)``.
An :class:`Entry` says what ptfile does with it: push an inert ``value`` (a dtype,
a storage class), ``call`` one of ptfile's own constructors (REDUCE), or create an
instance with ``new`` (NEWOBJ).  Nothing outside this table is ever called, and
nothing is ever imported: the constructors are ptfile's own code.

:func:`judge` grades the engine's inventory.  Loading and scanning both use it,
so ``ptfile.load`` refuses exactly the files ``ptfile.scan`` does not call clean:

* ``dangerous``: something outside the table would be called (REDUCE, INST, OBJ,
  NEWOBJ_EX), or a known code-execution callable is named anywhere, even as an
  argument.  The list of such callables only grades severity; what may run is
  decided by the table alone.
* ``unknown-class``: classes outside the table are instantiated (NEWOBJ) or
  referenced, as whole pickled models do.  ``load(records=True)`` returns them as
  inert :class:`~ptfile.values.Record` objects.
* ``clean``: only table entries, used as the table allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import dtypes, metadata, objects, rebuild, special, torchscript
from .engine import Engine
from .inventory import GlobalUse
from .tensors import StorageType
from .values import Global

__all__ = ["Entry", "lookup", "entries", "judge", "Judgement", "is_code_execution"]

CLEAN = "clean"
UNKNOWN_CLASS = "unknown-class"
DANGEROUS = "dangerous"


@dataclass(frozen=True)
class Entry:
    """What ptfile does with one global, and why it is safe."""

    category: str  # tensor, storage, dtype, container, numpy, metadata
    reason: str
    call: Callable[..., Any] | None = None  # REDUCE target
    new: Callable[..., Any] | None = None  # NEWOBJ target
    value: Any = None  # pushed as is by GLOBAL


_TABLE: dict[tuple[str, str], Entry] = {}


def _add(module: str, name: str, category: str, reason: str, **how: Any) -> None:
    _TABLE[(module, name)] = Entry(category, reason, **how)


# -- tensors -------------------------------------------------------------------
_add("torch._utils", "_rebuild_tensor", "tensor", "tensor view of a storage (pre-1.0 files)", call=rebuild.rebuild_tensor)
_add("torch._utils", "_rebuild_tensor_v2", "tensor", "tensor view of a storage: torch.save's main tensor path",
     call=rebuild.rebuild_tensor_v2)
_add("torch._utils", "_rebuild_tensor_v3", "tensor", "tensor view with an explicit dtype (float8, uint16, complex32)",
     call=rebuild.rebuild_tensor_v3)
_add("torch._utils", "_rebuild_parameter", "tensor", "marks a tensor as nn.Parameter", call=rebuild.rebuild_parameter)
_add("torch._utils", "_rebuild_parameter_with_state", "tensor", "nn.Parameter carrying Python attributes",
     call=rebuild.rebuild_parameter_with_state)
_add("torch._utils", "_rebuild_meta_tensor_no_storage", "tensor", "shape and dtype of a meta tensor, no data",
     call=special.rebuild_meta_tensor)
_add("torch._utils", "_rebuild_qtensor", "tensor", "quantized tensor: integers from a storage plus checked qparams",
     call=special.rebuild_qtensor)
_add("torch._utils", "_rebuild_sparse_tensor", "tensor", "sparse tensor from index and value tensors",
     call=special.rebuild_sparse_tensor)
_add("torch._tensor", "_rebuild_from_type_v2", "tensor",
     "tensor subclass or tensor with attributes; rebuilds only through another tensor entry",
     call=special.rebuild_from_type_v2)
_add("torch.serialization", "_get_layout", "tensor", "looks up a layout by name for _rebuild_sparse_tensor",
     call=special.get_layout)
_add("torch", "Tensor", "tensor", "class argument of _rebuild_from_type_v2; never called")
_add("torch.nn.parameter", "Parameter", "tensor", "class argument of _rebuild_from_type_v2; never called")
for _name in special.QSCHEMES:
    _add("torch", _name, "dtype", "quantization scheme named in _rebuild_qtensor parameters",
         value=special.qscheme_value(_name))
for _name in special.LAYOUTS:
    _add("torch", _name, "dtype", "tensor layout value", value=special.layout_value(_name))
_add("torch._utils", "_rebuild_nested_tensor", "tensor", "strided nested tensor from its buffer and layout tensors",
     call=special.rebuild_nested_tensor)
for _name, _what in (
    ("_rebuild_wrapper_subclass", "wrapper tensor subclasses"),
    ("_rebuild_device_tensor_from_numpy", "device tensors from numpy"),
    ("_rebuild_device_tensor_from_cpu_tensor", "device tensors from CPU tensors"),
):
    _add("torch._utils", _name, "tensor", f"rebuilds {_what} from data only", call=rebuild.not_supported(_what))

# -- storages and dtypes: inert values -----------------------------------------
for _info in dtypes.all_infos():
    _storage = _info.scalar_type + "Storage"
    _add("torch", _storage, "storage", "storage class naming an element type", value=StorageType(_storage, _info))
for _info in dtypes.all_infos():
    if _info.legacy_storage and not _info.is_quantized:
        _storage = _info.legacy_storage
        _add("torch.cuda", _storage, "storage", "storage class of a GPU-saved legacy file; data is read to the CPU",
             value=StorageType(_storage, _info))
        for _module in ("torch", "torch.cuda"):
            _tensor = _info.scalar_type + "Tensor"
            _add(_module, _tensor, "tensor", "legacy tensor type named by tar-format files; never called",
                 value=Global(_module, _tensor))
_add("torch.storage", "UntypedStorage", "storage", "byte storage of a v3 tensor",
     value=StorageType("UntypedStorage", None))
for _name in dtypes.TORCH_DTYPE_NAMES:
    _add("torch", _name, "dtype", "element type passed to _rebuild_tensor_v3", value=rebuild.TorchDtype(_name))

# -- containers and builtins ---------------------------------------------------
_add("collections", "OrderedDict", "container", "state dicts are OrderedDicts", call=objects.ordered_dict,
     new=objects.ordered_dict)
_add("collections", "Counter", "container", "a dict of counts", call=objects.counter)
_add("builtins", "set", "container", "sets, pickled by protocol 2 as set(list)", call=objects.make_set)
_add("builtins", "frozenset", "container", "frozensets, pickled as frozenset(list)", call=objects.make_frozenset)
_add("builtins", "bytearray", "container", "bytearrays", call=objects.make_bytearray)
_add("builtins", "bytes", "container", "empty bytes under protocol 2", call=objects.make_bytes)
_add("builtins", "complex", "container", "complex numbers", call=objects.make_complex)
_add("_codecs", "encode", "container", "protocol 2 stores bytes as encode(latin-1 text)", call=objects.codecs_encode)
_add("torch", "Size", "container", "tensor shapes, kept as tuples", call=objects.torch_size)
_add("torch", "device", "metadata", "device names, kept as records", call=objects.torch_device)

# -- numpy ---------------------------------------------------------------------
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _add(_module, "_reconstruct", "numpy", "empty numpy array that BUILD fills from bytes",
         call=objects.numpy_reconstruct)
    _add(_module, "scalar", "numpy", "numpy scalar from its bytes", call=objects.numpy_scalar)
_add("numpy", "ndarray", "numpy", "argument of _reconstruct; never called")
_add("numpy", "dtype", "numpy", "simple numpy dtype by type code", call=objects.numpy_dtype)

# -- metadata records ----------------------------------------------------------
_add("argparse", "Namespace", "metadata", "training arguments (fairseq and many others)", call=objects.namespace,
     new=objects.namespace)

# numpy random states (RNG snapshots in training checkpoints); all become records.
for _ctor, _how in (("__randomstate_ctor", metadata.randomstate_ctor), ("__generator_ctor", metadata.generator_ctor),
                    ("__bit_generator_ctor", metadata.bit_generator_ctor)):
    _add("numpy.random._pickle", _ctor, "metadata", "numpy RNG state, kept as a record", call=_how)
_add("numpy.random", "__RandomState_ctor", "metadata", "RandomState of numpy < 1.17, kept as a record",
     call=metadata.record_of("numpy.random.mtrand", "RandomState", no_args=True))
_add("numpy.random.mtrand", "RandomState", "metadata", "legacy numpy RNG, a record that BUILD fills",
     call=metadata.record_of("numpy.random.mtrand", "RandomState"),
     new=metadata.record_of("numpy.random.mtrand", "RandomState"))
_add("numpy.random._generator", "Generator", "metadata", "class of the record __generator_ctor makes")
for _name, _module in metadata.BIT_GENERATORS.items():
    _add(_module, _name, "metadata", "bit generator class: argument of __bit_generator_ctor; never called")
_add("numpy.random.bit_generator", "SeedSequence", "metadata", "class argument of __pyx_unpickle_SeedSequence")
_add("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence", "metadata", "SeedSequence record; BUILD sets it",
     call=metadata.unpickle_seed_sequence)

# omegaconf (Hydra, Lightning, NeMo hyper-parameters): NEWOBJ + BUILD, kept as records.
for _module, _name in (
    ("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
    ("omegaconf.base", "ContainerMetadata"), ("omegaconf.base", "Metadata"), ("omegaconf.nodes", "AnyNode"),
    ("omegaconf.nodes", "StringNode"), ("omegaconf.nodes", "IntegerNode"), ("omegaconf.nodes", "FloatNode"),
    ("omegaconf.nodes", "BooleanNode"), ("omegaconf.nodes", "BytesNode"), ("omegaconf.nodes", "PathNode"),
):
    _add(_module, _name, "metadata", "omegaconf config node: a record of its pickled state",
         new=metadata.record_of(_module, _name, no_args=True))
_add("typing", "Any", "metadata", "type annotation omegaconf stores as data", value=metadata.TYPING_ANY)

# Lightning hyper-parameters: a dict subclass.
for _module in ("lightning_fabric.utilities.data", "lightning.fabric.utilities.data",
                "pytorch_lightning.utilities.parsing"):
    _add(_module, "AttributeDict", "metadata", "Lightning hyper-parameters: a dict", call=metadata.attribute_dict,
         new=metadata.attribute_dict)

# Standard-library values.
for _module in ("pathlib", "pathlib._local"):
    for _name, _flavour in (("PosixPath", metadata.pathlib.PurePosixPath),
                            ("PurePosixPath", metadata.pathlib.PurePosixPath),
                            ("WindowsPath", metadata.pathlib.PureWindowsPath),
                            ("PureWindowsPath", metadata.pathlib.PureWindowsPath)):
        _add(_module, _name, "metadata", "a path, kept as a pure path that never touches the disk",
             call=metadata.pure_path(_flavour))
_add("datetime", "datetime", "metadata", "timestamp from its validated byte state", call=metadata.make_datetime)
_add("datetime", "date", "metadata", "date from its validated byte state", call=metadata.make_date)
_add("datetime", "time", "metadata", "time of day from its validated byte state", call=metadata.make_time)
_add("datetime", "timedelta", "metadata", "duration from three integers", call=metadata.make_timedelta)
_add("datetime", "timezone", "metadata", "fixed-offset time zone of a timestamp", call=metadata.make_timezone)
_add("torch.torch_version", "TorchVersion", "metadata", "torch.__version__, a str subclass: kept as str",
     call=metadata.torch_version, new=metadata.torch_version)
_add("collections", "defaultdict", "container", "dict with a builtin-type default factory", call=metadata.make_defaultdict)
for _name in ("object", "dict", "list", "tuple", "int", "float", "str", "bool"):
    _add("builtins", _name, "container",
         "builtin type as data (defaultdict factory, omegaconf type, _reconstructor base); never called")
_add("copyreg", "_reconstructor", "container", "protocol 0/1 instance: a 'new' use of its class, never a call",
     call=metadata.reconstructor)

# torch.distributed.checkpoint (DCP) .metadata: its dataclasses are inert only inside a DCP
# folder (ptfile.dcp vouches for them); the one enum is pickled as REDUCE(cls, (value,)).
_add("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", "metadata",
     "DCP memory-format enum, pickled as a call with its value: returns the member's name as a str",
     call=metadata.mem_format_encoding)

# TorchScript list builders and type tags: identity-like on checked lists.
for _name, _how in torchscript.PICKLE_BUILDERS.items():
    _add("torch.jit._pickle", _name, "container", "TorchScript typed list or type tag, returned as plain data",
         call=_how)


def new_engine(data: bytes, record: str, inventory: list, context: Any, persistent_load: Any) -> Engine:
    """The one restricted engine, wired to this one table."""
    return Engine(data, lookup=lookup, persistent_load=persistent_load, context=context, record=record,
                  inventory=inventory, use_factory=GlobalUse)


def lookup(module: str, name: str) -> Entry | None:
    """The entry for exactly ``module.name``, or None."""
    return _TABLE.get((module, name))


def entries() -> dict[tuple[str, str], Entry]:
    """A copy of the whole table, for documentation and tests."""
    return dict(_TABLE)


# -- grading -------------------------------------------------------------------

#: Modules whose every member can run code, touch files or the network, or load more pickles.
#: Used to grade a reference as dangerous; calling anything outside the table is dangerous anyway.
_CODE_EXECUTION_MODULES = frozenset(
    ["os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "_winapi", "pty", "shutil", "tempfile", "glob", "io", "_io", "socket", "ssl", "http", "urllib", "requests", "ftplib", "smtplib", "telnetlib", "imaplib", "poplib", "webbrowser", "ctypes", "_ctypes", "multiprocessing", "asyncio", "concurrent", "threading", "signal", "runpy", "code", "codeop", "pdb", "bdb", "cProfile", "profile", "timeit", "trace", "doctest", "idlelib", "lib2to3", "pkgutil", "pydoc", "importlib", "imp", "zipimport", "marshal", "pickle", "_pickle", "copyreg", "shelve", "dill", "joblib", "cloudpickle", "types", "inspect", "operator", "_operator", "functools", "builtins", "venv", "ensurepip", "pip", "setuptools", "distutils", "logging", "uuid", "_osx_support", "_aix_support", "tkinter", "turtle", "sqlite3", "dbm", "platform", "sysconfig", "site", "gc", "weakref", "typing"]
)
_CODE_EXECUTION_PREFIXES = (
    "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.lib.npyio", "torch.hub", "torch.jit",
    "torch._inductor", "torch._dynamo", "torch.utils", "torch.serialization", "torch.package", "torch.fx",
    "torch._C", "torch.cuda", "torch.backends", "torch.distributed",
)
_CODE_EXECUTION_NAMES = frozenset(
    {("torch", "load"), ("torch", "save"), ("torch.storage", "_load_from_bytes"), ("numpy", "load"),
     ("numpy", "loadtxt"), ("numpy", "fromfile"), ("torch", "from_file")}
)


def is_code_execution(module: str, name: str) -> bool:
    """True for globals known to run code or reach outside the process, wherever they appear."""
    if (module, name) in _TABLE:
        return False
    if (module, name) in _CODE_EXECUTION_NAMES or "." in name or (name.startswith("__") and name.endswith("__")):
        return True
    if module.split(".", 1)[0] in _CODE_EXECUTION_MODULES:
        return True
    return any(module == p or module.startswith(p + ".") for p in _CODE_EXECUTION_PREFIXES)


@dataclass(frozen=True)
class Finding:
    """One global the judge objects to, with the severity and every use of it."""

    module: str
    name: str
    severity: str  # DANGEROUS or UNKNOWN_CLASS
    uses: tuple[GlobalUse, ...]

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"

    def describe(self) -> str:
        where = ", ".join(f"{u.use} at {u.where()}" for u in self.uses[:4])
        more = f" and {len(self.uses) - 4} more" if len(self.uses) > 4 else ""
        return f"{self.path} [{self.severity}]: {where}{more}"


@dataclass(frozen=True)
class Judgement:
    verdict: str  # CLEAN, UNKNOWN_CLASS or DANGEROUS
    findings: tuple[Finding, ...]


#: Uses of a class that create or describe an instance without calling anything.
_INERT_USES = frozenset({"new", "build", "reference"})


def _plain_name(name: str) -> bool:
    """A class name with no dots and no dunder: nothing a container may vouch for hides behind it."""
    return "." not in name and not (name.startswith("__") and name.endswith("__"))


def _severity(use: GlobalUse, inert_classes: Callable[[str, str], bool] | None = None) -> str | None:
    if (inert_classes is not None and use.use in _INERT_USES and _plain_name(use.name)
            and inert_classes(use.module, use.name)):
        # The container vouches that these classes are data only (TorchScript modules, the DCP
        # dataclasses of torch.distributed, a prefix graded as code execution otherwise).
        return None
    if is_code_execution(use.module, use.name):
        return DANGEROUS
    entry = _TABLE.get((use.module, use.name))
    if use.use == "call":
        return None if entry is not None and entry.call is not None else DANGEROUS
    if use.use == "new":
        return None if entry is not None and entry.new is not None else UNKNOWN_CLASS
    return None if entry is not None else UNKNOWN_CLASS


def judge(inventory: Iterable[GlobalUse], *, inert_classes: Callable[[str, str], bool] | None = None) -> Judgement:
    """Grade every use of every global; the worst grade is the verdict.

    ``inert_classes(module, name)`` is the container's allowance: classes it knows
    to be data only (the ``__torch__.*`` classes of a TorchScript archive, whose
    code is never run; the dataclasses of a DCP ``.metadata``) may be instantiated,
    built and named, even in a module graded as code execution.  Dotted and dunder
    names are never vouched for, and calling a vouched class is still graded as any
    call outside the table is.
    """
    grades: dict[tuple[str, str], str] = {}
    uses: dict[tuple[str, str], list[GlobalUse]] = {}
    for use in inventory:
        severity = _severity(use, inert_classes)
        key = (use.module, use.name)
        uses.setdefault(key, []).append(use)
        if severity is not None and grades.get(key) != DANGEROUS:
            grades[key] = severity
    findings = tuple(Finding(m, n, grade, tuple(uses[(m, n)])) for (m, n), grade in grades.items())
    if any(f.severity == DANGEROUS for f in findings):
        verdict = DANGEROUS
    elif findings:
        verdict = UNKNOWN_CLASS
    else:
        verdict = CLEAN
    return Judgement(verdict, findings)
