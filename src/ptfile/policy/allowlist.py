"""The one table of globals a checkpoint may use, and the judge of what a pickle did.

Every GLOBAL a pickle names is looked up here by its exact ``(module, name)``.
An :class:`Entry` says what ptfile does with it: push an inert ``value`` (a dtype,
a storage class), ``call`` one of ptfile's own constructors (REDUCE), or create an
instance with ``new`` (NEWOBJ).  Nothing outside this table is ever called, and
nothing is ever imported: the constructors are ptfile's own code.

:func:`judge` grades the engine's inventory in four levels.  Loading and scanning
both use it, so ``ptfile.load`` refuses exactly the files ``ptfile.scan`` does not
call clean:

* ``dangerous``: a known code-execution gadget is named or called, even as an
  argument (:data:`_GADGETS`, one table with a reason per row: whole modules such as
  ``os`` or ``subprocess``, and named gadgets such as ``torch.storage._load_from_bytes``),
  or a class whose code ships in the archive (TorchScript's ``__torch__``) is called.
  Refused in every mode.
* ``unknown-call``: a global neither in the allowlist nor a known gadget is called
  (REDUCE, INST, OBJ, NEWOBJ_EX): an Enum member, a namedtuple, a class with its own
  ``__reduce__``.  ``torch.load(weights_only=False)`` would run that third-party code;
  ``load(records=True)`` returns the call as an inert :class:`~ptfile.pickle.values.Record`.
* ``unknown-class``: classes outside the table are instantiated (NEWOBJ), built or
  referenced, as whole pickled models do; ``load(records=True)`` returns them as records.
* ``clean``: only table entries, used as the table allows.

An :class:`Allow` (``--allow module.name`` or ``module.*``) accepts named third-party
globals: their unknown-call and unknown-class findings become notes.  It never
accepts a dangerous one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..pickle.engine import Engine
from ..pickle.inventory import GlobalUse
from ..pickle.values import Global
from ..tensors import dtypes, metadata, objects, rebuild, special
from ..tensors.views import StorageType

__all__ = ["Entry", "lookup", "entries", "judge", "Judgement", "Finding", "Allow", "is_code_execution",
           "gadget_reason", "gadgets", "LEVELS"]

CLEAN = "clean"
UNKNOWN_CLASS = "unknown-class"
UNKNOWN_CALL = "unknown-call"
DANGEROUS = "dangerous"


class Entry:
    """What ptfile does with one global, and why it is safe.

    A plain class, not a dataclass: building a dataclass costs about a millisecond at import.
    """

    __slots__ = ("category", "reason", "call", "new", "value")

    def __init__(self, category: str, reason: str, call: Callable[..., Any] | None = None,
                 new: Callable[..., Any] | None = None, value: Any = None) -> None:
        self.category = category  # tensor, storage, dtype, container, numpy, metadata
        self.reason = reason
        self.call = call  # REDUCE target
        self.new = new  # NEWOBJ target
        self.value = value  # pushed as is by GLOBAL

    def __repr__(self) -> str:
        return f"Entry({self.category!r}, {self.reason!r})"


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
    for _name, _flavour in (("PosixPath", "PurePosixPath"), ("PurePosixPath", "PurePosixPath"),
                            ("WindowsPath", "PureWindowsPath"), ("PureWindowsPath", "PureWindowsPath")):
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
# folder (ptfile.formats.dcp vouches for them); the one enum is pickled as REDUCE(cls, (value,)).
_add("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", "metadata",
     "DCP memory-format enum, pickled as a call with its value: returns the member's name as a str",
     call=metadata.mem_format_encoding)

# TorchScript list builders and type tags: identity-like on checked lists.
for _name, _how in objects.PICKLE_BUILDERS.items():
    _add("torch.jit._pickle", _name, "container", "TorchScript typed list or type tag, returned as plain data",
         call=_how)


def new_engine(data: bytes, record: str, inventory: list, context: Any, persistent_load: Any,
               origin: int = 0) -> Engine:
    """The one restricted engine, wired to this one table; ``origin`` is where ``data`` starts in the file."""
    return Engine(data, lookup=lookup, persistent_load=persistent_load, context=context, record=record,
                  inventory=inventory, use_factory=GlobalUse, origin=origin)


def lookup(module: str, name: str) -> Entry | None:
    """The entry for exactly ``module.name``, or None."""
    return _TABLE.get((module, name))


def entries() -> dict[tuple[str, str], Entry]:
    """A copy of the whole table, for documentation and tests."""
    return dict(_TABLE)


# -- grading -------------------------------------------------------------------

#: Known code-execution gadgets: the one table that grades a finding ``dangerous``.  A key is
#: a module (it covers every member and submodule) or one exact ``module.name``; each says why.
#: It only grades: what may run is decided by the allowlist above alone.
_GADGETS: dict[str, str] = {}


def _gadgets(reason: str, *keys: str) -> None:
    for key in keys:
        _GADGETS[key] = reason


_gadgets("runs commands or spawns processes", "os", "posix", "nt", "subprocess", "_posixsubprocess", "_winapi",
         "pty", "commands", "multiprocessing", "asyncio", "concurrent", "threading", "signal", "venv", "ensurepip",
         "pip", "setuptools", "distutils", "_osx_support", "_aix_support", "uuid", "platform", "webbrowser")
_gadgets("evaluates, compiles or imports code (eval, exec, compile, getattr, __import__, open)", "builtins",
         "__builtin__", "importlib", "imp", "zipimport", "pkgutil", "pydoc", "runpy", "code", "codeop", "types",
         "inspect", "site", "sysconfig", "sys", "gc", "weakref", "typing")
_gadgets("runs a statement or script given as text (profilers, debuggers, test runners)", "pdb", "bdb", "cProfile",
         "profile", "timeit", "trace", "doctest", "idlelib", "lib2to3", "tkinter", "turtle")
_gadgets("calls or resolves any object it is handed (methodcaller, attrgetter, partial)", "operator", "_operator",
         "functools", "copyreg")
_gadgets("reads or writes files", "shutil", "tempfile", "glob", "io", "_io", "logging", "shelve", "dbm", "sqlite3")
_gadgets("reaches the network", "socket", "ssl", "http", "urllib", "requests", "ftplib", "smtplib", "telnetlib",
         "imaplib", "poplib")
_gadgets("loads native code", "ctypes", "_ctypes")
_gadgets("deserializes a nested pickle or code object", "marshal", "pickle", "_pickle", "dill", "joblib",
         "cloudpickle")
_gadgets("numpy code runners and pickle loaders (runstring, f2py, load with allow_pickle)", "numpy.testing",
         "numpy.f2py", "numpy.distutils", "numpy.lib.npyio", "numpy.load", "numpy.loadtxt", "numpy.fromfile")
_gadgets("torch code paths: compilers, hub downloads, TorchScript, packages, collect_env.run, nested loads",
         "torch.hub", "torch.jit", "torch._inductor", "torch._dynamo", "torch.utils", "torch.serialization",
         "torch.package", "torch.fx", "torch._C", "torch.cuda", "torch.backends", "torch.distributed",
         "torch.load", "torch.save", "torch.from_file", "torch.storage._load_from_bytes")
_gadgets("TorchScript operator namespaces that reach files, processes or the network (collectives, "
         "shared memory, debug tensor loading)", "ops.c10d", "ops.symm_mem", "ops.debugprims", "ops._c10d_functional",
         "ops.c10d_functional")
_gadgets("imports any dotted name it is given (a module beside the allowed rebuild functions)",
         "torch._utils._import_dotted_name")


def gadget_reason(module: str, name: str) -> str | None:
    """Why ``module.name`` is a known code-execution gadget, or None if it is not one.

    Table entries are exempt: they are only ever pushed as values or replaced by ptfile's
    own constructors.  A call of an entry that has no constructor is graded by
    :func:`_gadget_row` alone (``builtins.str('os')`` computes a module name for a payload).
    """
    if (module, name) in _TABLE:
        return None
    return _gadget_row(module, name)


def _gadget_row(module: str, name: str) -> str | None:
    """The reason the gadget rules give ``module.name``, table entries included."""
    if "." in name:
        return "dotted name: unpickling walks attributes from the module to anything it reaches"
    if name.startswith("__") and name.endswith("__"):
        return "dunder name: reaches an object's internals (__import__, __builtins__, __getattribute__)"
    path = f"{module}.{name}"
    if path in _GADGETS:
        return _GADGETS[path]
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        reason = _GADGETS.get(".".join(parts[:depth]))
        if reason is not None:
            return reason
    return None


def is_code_execution(module: str, name: str) -> bool:
    """True for globals known to run code or reach outside the process, wherever they appear."""
    return gadget_reason(module, name) is not None


def gadgets() -> dict[str, str]:
    """A copy of the gadget table (module or ``module.name`` -> reason), for documentation and tests."""
    return dict(_GADGETS)


# -- allowing named third-party globals ------------------------------------------

_ALLOW_PATTERN = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\.(?:\*|[A-Za-z_]\w*)")


class Allow:
    """Third-party globals a caller accepts: exact ``module.name``, or ``module.*`` for every
    member of that module itself (not of its submodules: each is named on its own).

    An allowed global's ``unknown-call`` and ``unknown-class`` findings become notes; a
    ``dangerous`` finding is never allowed, whatever the pattern.
    """

    __slots__ = ("patterns", "_exact", "_modules")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        if isinstance(patterns, str):  # one pattern, not its characters
            patterns = (patterns,)
        self.patterns = tuple(patterns)
        self._exact: set[str] = set()
        self._modules: set[str] = set()
        for pattern in self.patterns:
            if type(pattern) is not str or not _ALLOW_PATTERN.fullmatch(pattern):
                raise ValueError(f"allow pattern {pattern!r} is not 'module.name' or 'module.*'")
            if pattern.endswith(".*"):
                self._modules.add(pattern[:-2])
            else:
                self._exact.add(pattern)

    def covers(self, module: str, name: str) -> bool:
        return f"{module}.{name}" in self._exact or module in self._modules

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"Allow({list(self.patterns)!r})"


def as_allow(allow: Allow | Iterable[str] | None) -> Allow:
    """The caller's ``allow=`` argument (patterns, an :class:`Allow` or None) as an :class:`Allow`."""
    if isinstance(allow, Allow):
        return allow
    return Allow(allow or ())


# -- judging -------------------------------------------------------------------

#: Argument summaries kept per unknown call: enough to recognise it, bounded whatever the file.
MAX_ARGUMENT_SAMPLES = 4


@dataclass(frozen=True)
class Finding:
    """One global the judge objects to, with its level, every use of it and, if dangerous, why."""

    module: str
    name: str
    severity: str  # DANGEROUS, UNKNOWN_CALL or UNKNOWN_CLASS
    uses: tuple[GlobalUse, ...]
    reason: str = ""  # why a dangerous global is a gadget

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def calls(self) -> int:
        """How many times the pickle calls this global."""
        return sum(1 for u in self.uses if u.use == "call")

    @property
    def arguments(self) -> list[str]:
        """Distinct summaries of the arguments it is called with, at most :data:`MAX_ARGUMENT_SAMPLES`."""
        seen = dict.fromkeys(u.args for u in self.uses if u.use == "call")
        return list(seen)[:MAX_ARGUMENT_SAMPLES]

    def describe(self) -> str:
        where = ", ".join(u.action() for u in self.uses[:4])
        more = f" and {len(self.uses) - 4} more" if len(self.uses) > 4 else ""
        detail = f"; {self.reason}" if self.reason else ""
        if self.severity == UNKNOWN_CALL:
            times = "once" if self.calls == 1 else f"{self.calls} times"
            detail = f"; called {times} with {', '.join(self.arguments)}"
        return f"{self.path} [{self.severity}]: {where}{more}{detail}"


@dataclass(frozen=True)
class Judgement:
    verdict: str  # CLEAN, UNKNOWN_CLASS, UNKNOWN_CALL or DANGEROUS
    findings: tuple[Finding, ...]
    allowed: tuple[Finding, ...] = ()  # findings the caller's Allow accepted


#: Uses of a class that create or describe an instance without calling anything.
_INERT_USES = frozenset({"new", "build", "reference"})
#: Levels from worst to best; a finding takes the worst level of its uses.
LEVELS = (DANGEROUS, UNKNOWN_CALL, UNKNOWN_CLASS, CLEAN)


def _plain_name(name: str) -> bool:
    """A class name with no dots and no dunder: nothing a container may vouch for hides behind it."""
    return "." not in name and not (name.startswith("__") and name.endswith("__"))


#: Why calling a class the container vouches for is dangerous: its code is the archive's own.
_CONTAINER_CODE = "calls a class whose code the archive itself defines (a TorchScript class, run by its reader)"


def _container_code(module: str, name: str, inert_classes: Callable[[str, str], bool] | None) -> bool:
    """Whether the container vouches for ``module.name`` as data: its code ships in the file."""
    return inert_classes is not None and _plain_name(name) and inert_classes(module, name)


def _severity(use: GlobalUse, inert_classes: Callable[[str, str], bool] | None = None) -> str | None:
    if (inert_classes is not None and use.use in _INERT_USES and _plain_name(use.name)
            and inert_classes(use.module, use.name)):
        # The container vouches that these classes are data only (TorchScript modules, the DCP
        # dataclasses of torch.distributed, a prefix graded as code execution otherwise).
        return None
    entry = _TABLE.get((use.module, use.name))
    if use.use == "call":
        if entry is not None and entry.call is not None:
            return None
        if _gadget_row(use.module, use.name) is not None or _container_code(use.module, use.name, inert_classes):
            return DANGEROUS
        return UNKNOWN_CALL
    if is_code_execution(use.module, use.name):
        return DANGEROUS
    if use.use == "new":
        return None if entry is not None and entry.new is not None else UNKNOWN_CLASS
    return None if entry is not None else UNKNOWN_CLASS


def judge(inventory: Iterable[GlobalUse], *, inert_classes: Callable[[str, str], bool] | None = None,
          allow: Allow | None = None) -> Judgement:
    """Grade every use of every global; the worst level of any finding is the verdict.

    Levels, worst first:

    * ``dangerous``: a known code-execution gadget (see :data:`_GADGETS`) is named or called.
    * ``unknown-call``: a global neither allowlisted nor a known gadget is called (REDUCE,
      INST, OBJ, NEWOBJ_EX): ``torch.load(weights_only=False)`` would run third-party code.
    * ``unknown-class``: a class outside the table is instantiated (NEWOBJ), built or named.
    * ``clean``: only table entries, used as the table allows.

    ``inert_classes(module, name)`` is the container's allowance: classes it knows
    to be data only (the ``__torch__.*`` classes of a TorchScript archive, whose
    code is never run; the dataclasses of a DCP ``.metadata``) may be instantiated,
    built and named, even in a module graded as code execution.  Dotted and dunder
    names are never vouched for, and calling a vouched class is ``dangerous``: its code
    ships in the archive and the archive's reader would run it.  ``allow`` moves the caller's accepted third-party
    globals out of the findings (never a dangerous one).
    """
    grades: dict[tuple[str, str], str] = {}
    uses: dict[tuple[str, str], list[GlobalUse]] = {}
    for use in inventory:
        severity = _severity(use, inert_classes)
        key = (use.module, use.name)
        uses.setdefault(key, []).append(use)
        if severity is not None and (key not in grades or LEVELS.index(severity) < LEVELS.index(grades[key])):
            grades[key] = severity
    findings: list[Finding] = []
    allowed: list[Finding] = []
    for (module, name), grade in grades.items():
        reason = ""
        if grade == DANGEROUS:
            reason = _gadget_row(module, name) or (_CONTAINER_CODE if _container_code(module, name, inert_classes) else "")
        finding = Finding(module, name, grade, tuple(uses[(module, name)]), reason)
        accepted = allow is not None and grade != DANGEROUS and allow.covers(module, name)
        (allowed if accepted else findings).append(finding)
    verdict = min((f.severity for f in findings), key=LEVELS.index, default=CLEAN)
    return Judgement(verdict, tuple(findings), tuple(allowed))
