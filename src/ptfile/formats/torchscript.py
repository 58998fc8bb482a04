"""TorchScript archives (``torch.jit.save``): weights and module tree, with no code run.

A TorchScript archive is a torch zip with more records::

    <prefix>/data.pkl, data/<key>            the module tree and its tensors
    <prefix>/constants.pkl, constants/<key>  a tuple of constants (CONSTANTS.cN in the code)
    <prefix>/code/__torch__/...py            TorchScript source of every class, plus .debug_pkl
    <prefix>/extra/<name>                    user files (``_extra_files``)

The pickles come from the C++ pickler: each module is ``GLOBAL '__torch__.<path> <Class>'``,
EMPTY_TUPLE, NEWOBJ, then BUILD with a dict of its attributes (parameters, buffers,
submodules and plain attributes side by side).  Typed lists go through
``torch.jit._pickle.build_intlist`` and friends, typed dicts through ``restore_type_tag``.

ptfile runs both pickles through the same restricted engine as any checkpoint.
``__torch__.*`` classes become inert :class:`~ptfile.pickle.values.Record` objects; in this
container only, instantiating them (NEWOBJ, BUILD, naming them) is judged clean,
because the code that would give them behaviour is never compiled or run.  TorchBind
classes (``__torch__.torch.classes.*``) are C++ of the process, not code of the archive:
only the weight-packing ones of :data:`TORCHBIND_DATA_CLASSES` are vouched for.  Calling
one (REDUCE) stays dangerous.  The code records are exposed as text only, and
read as text to learn which attributes are parameters and buffers
(``__parameters__ = [...]`` / ``__buffers__ = [...]``), so that the lazy handle
lists tensors under the names ``torch.jit.load(f).state_dict()`` gives.

Every record torch could compile as code (``code/`` or ``*.py``, names compared ignoring
ASCII case, as torch's zip reader finds them) is parsed and judged by
:func:`ptfile.formats.scriptcode.judge_code`: each call that is not on its allowlist (``torch.save``,
``torch.from_file``, an unknown operator: the shape of CVE-2025-32434, where ``torch.load``
handed such an archive to ``torch.jit.load``) is entered in the inventory as a call of that
path, at its place in the code record, so loading refuses the archive and scanning calls it
dangerous by the same judge; a record that does not parse makes the archive unreadable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..containers.ziparchive import ZipArchive, ZipEntry
from ..errors import CorruptFileError, LimitExceededError
from ..io.source import Source
from ..pickle.values import Record
from ..tensors.views import StorageRef
from .scriptcode import CUSTOM_CLASSES, ascii_lower, is_code_record, judge_code
from .torchzip import TorchZip, check_storage_key, parse_storage_pid

__all__ = ["TorchScriptArchive", "is_torchscript_class", "ClassCode"]

#: Module prefix of every class TorchScript compiles; such classes are records, never imported.
TORCH_MODULE = "__torch__"
#: TorchBind classes a pickle may rebuild: their C++ ``__setstate__`` packs weight tensors in memory
#: (quantized, sparse and RNN layers).  Other ``__torch__.torch.classes.*`` are C++ registered in the
#: process, not code of the archive, so the archive cannot vouch for them: they are unknown classes.
TORCHBIND_DATA_CLASSES = frozenset({
    ("__torch__.torch.classes.quantized", "LinearPackedParamsBase"),
    ("__torch__.torch.classes.quantized", "Conv2dPackedParamsBase"),
    ("__torch__.torch.classes.quantized", "Conv3dPackedParamsBase"),
    ("__torch__.torch.classes.quantized", "EmbeddingPackedParamsBase"),
    ("__torch__.torch.classes.sparse", "LinearPackedParamsBase"),
    ("__torch__.torch.classes.rnn", "CellParamsBase"),
})
#: Code records read as text to classify attributes; more than this is refused, not buffered.
MAX_CODE_BYTES = 64 << 20

_CLASS_LINE = re.compile(r"^class\s+(\w+)\s*(?:\(\s*([\w.]*)\s*\))?\s*:", re.MULTILINE)
_LIST_LINE = re.compile(r"^ +(__parameters__|__buffers__)\s*=\s*\[(.*?)\]", re.MULTILINE | re.DOTALL)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
def is_torchscript_class(module: str, name: str) -> bool:
    """True for ``__torch__.*`` classes: compiled TorchScript types, kept as records."""
    return module == TORCH_MODULE or module.startswith(TORCH_MODULE + ".")


# -- code records --------------------------------------------------------------


@dataclass
class ClassCode:
    """What the TorchScript source says about one class, read as text."""

    qualified_name: str  # __torch__.torch.nn.modules.linear.Linear
    base: str  # "Module" for modules, "" for other classes
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)

    @property
    def is_module(self) -> bool:
        return self.base == "Module"


def parse_code(module: str, text: str) -> list[ClassCode]:
    """The classes one code record defines, with their parameter and buffer names."""
    found: list[ClassCode] = []
    starts = list(_CLASS_LINE.finditer(text))
    for i, match in enumerate(starts):
        body = text[match.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        info = ClassCode(f"{module}.{match.group(1)}", match.group(2) or "")
        for kind, items in _LIST_LINE.findall(body):
            names = [m.encode().decode("unicode_escape") if "\\" in m else m for m in _QUOTED.findall(items)]
            if kind == "__parameters__":
                info.parameters = names
            else:
                info.buffers = names
        found.append(info)
    return found


def _code_module(record: str) -> str:
    """``code/__torch__/torch/nn/modules/linear.py`` -> ``__torch__.torch.nn.modules.linear``; "" off ``code/``."""
    lower = ascii_lower(record)
    if not (lower.startswith("code/") and lower.endswith(".py")):
        return ""
    return record[len("code/") : -len(".py")].replace("/", ".")


# -- the container -------------------------------------------------------------


class TorchScriptArchive(TorchZip):
    """A ``torch.jit.save`` archive, as a container of two pickles and their storages.

    Attributes:
        code: record name (``code/__torch__.py``) -> TorchScript source text, never run; every record
            torch could compile as code (names compared ignoring ASCII case).
        code_calls: record name -> the paths its code calls that are not on the code allowlist.
        classes: qualified class name -> :class:`ClassCode`.
        constants: the tuple ``constants.pkl`` holds, once the pickles have run.
        extra: name -> bytes of the ``extra/`` records.
    """

    format = "torchscript"
    torchscript = True

    def __init__(self, source: Source, archive: ZipArchive | None = None) -> None:
        super().__init__(source, archive=archive)
        self.constants_entry = self.archive.get("constants.pkl")
        self._running = "data"
        self.constants: Any = ()
        records = self._read_code()
        self.code = {name: text for name, (_, text) in records.items()}
        self.classes = {c.qualified_name: c for name, text in self.code.items() for c in parse_code(_code_module(name), text)}
        judgement = judge_code((full, _code_module(name), text) for name, (full, text) in records.items())
        names = {full: name for name, (full, _) in records.items()}
        self.code_calls = {names[full]: paths for full, paths in judgement.calls().items()}
        # judged with the pickles' globals (the loader adds these to its inventory when it opens the archive)
        self.inventory_extra = judgement.uses
        self.extra = {name[len("extra/") :]: self.archive.read(entry) for name, entry in self.archive.records_under("extra/")}

    def _read_code(self) -> dict[str, tuple[str, str]]:
        """Every record torch could compile as code (see :func:`~ptfile.formats.scriptcode.is_code_record`).

        Returns name after the archive folder -> (the record's full name, its text).
        """
        folder = ascii_lower(self.archive.prefix) + "/"
        code: dict[str, tuple[str, str]] = {}
        total = 0
        for name in self.archive.order:
            # torch finds records by name ignoring ASCII case, the archive folder included
            if not ascii_lower(name).startswith(folder) or not is_code_record(name[len(folder):]):
                continue
            entry = self.archive.entries[name]
            total += entry.size
            if total > MAX_CODE_BYTES:
                raise LimitExceededError(f"{self.name}: more than {MAX_CODE_BYTES} bytes of TorchScript code")
            try:
                code[name[len(folder):]] = name, self.archive.read(entry).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorruptFileError(f"{self.name}: code record {name!r} is not UTF-8 text: {exc}") from None
        return code

    # -- the loader's container protocol -----------------------------------------------

    storage_folders = ("data/", "constants/")

    def object_entries(self) -> list[ZipEntry]:
        return [e for e in (self.pickle_entry, self.constants_entry) if e is not None]

    def pickles(self) -> Iterator[tuple[str, bytes]]:
        """``data.pkl``, then ``constants.pkl``; storage keys resolve against the pickle being run."""
        for kind, entry in (("data", self.pickle_entry), ("constants", self.constants_entry)):
            if entry is None:
                continue
            self._running = kind
            yield entry.name, self.archive.read(entry)

    def combine(self, trees: list[Any]) -> Any:
        """Keep the constants on the container; the module tree is the checkpoint."""
        if len(trees) > 1:
            self.constants = trees[1]
        return trees[0]

    def inert_classes(self, module: str, name: str) -> bool:
        if module == CUSTOM_CLASSES or module.startswith(CUSTOM_CLASSES + "."):
            return (module, name) in TORCHBIND_DATA_CLASSES
        return is_torchscript_class(module, name)

    def persistent_load(self, pid: Any, context: Any) -> StorageRef:
        if self._running == "data":
            return super().persistent_load(pid, context)
        storage_type, key, location, numel = parse_storage_pid(pid)
        return self._storage(f"{self._running}/{check_storage_key(key)}", f"{self._running}/{key}", storage_type,
                             location, numel)

    def named_tensors(self, tree: Any, is_leaf: Callable[[Any], bool]) -> Iterator[tuple[str, Any]]:
        """Parameters and buffers under the names ``torch.jit.load(f).state_dict()`` gives.

        A module's parameters come first, then its buffers, then its submodules,
        each in the order of the module's attributes; None entries are skipped,
        as torch skips them.  Without code for a class, every tensor attribute counts.
        """
        seen: set[int] = set()
        stack: list[tuple[str, Any]] = [("", tree)]
        while stack:
            prefix, module = stack.pop()
            if id(module) in seen or type(module) is not Record or not isinstance(module.state, dict):
                continue
            seen.add(id(module))
            code = self.classes.get(module.cls.path)
            attrs = module.state
            own = (code.parameters + code.buffers) if code is not None else [k for k, v in attrs.items() if is_leaf(v)]
            for name in own:
                value = attrs.get(name)
                if value is not None and is_leaf(value):
                    yield prefix + name, value
            children = [
                (prefix + str(key) + ".", value)
                for key, value in attrs.items()
                if type(value) is Record and self._is_module(value)
            ]
            stack.extend(reversed(children))

    def _is_module(self, record: Record) -> bool:
        code = self.classes.get(record.cls.path)
        if code is not None:
            return code.is_module
        return is_torchscript_class(record.cls.module, record.cls.name)

