"""What torch reads from real-world checkpoints, described as the golden fixtures are.

    python tests/realworld/oracle.py OUT_DIR FILE...

Writes ``OUT_DIR/<i>.expected.json`` and ``<i>.expected.bin`` for the i-th FILE (the format
of ``tests/fixtures/make_fixtures.py``), or ``<i>.error.txt`` when torch cannot read it.
It runs ``torch.load(weights_only=False)``, so it is only ever given the pinned,
hash-verified files of ``fetch.py``, and in a process of its own.  A class of a package
not installed here (chemprop, Lightning, torchmetrics) is replaced by a :class:`Stub`
that keeps what the pickle gave it; torch rebuilds every storage and tensor itself.
A TorchScript archive is described by its module's ``state_dict()``, which is what
``ptfile.open`` lists.
"""

from __future__ import annotations

import json
import pickle
import sys
import traceback
import types
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))

import torch  # noqa: E402
from make_fixtures import describe_tree  # noqa: E402


class Stub:
    """A class of a package this process does not have: keeps what the pickle gave it.

    torch still rebuilds every storage, tensor and parameter itself; a stand-in only
    replaces a third-party object (a model's hyper-parameters, a metric), and reduces
    to exactly the arguments, state and items the file pickled.
    """

    def __new__(cls, *args: Any) -> Stub:
        obj = object.__new__(cls)
        obj.__dict__["_pickled"] = (args, [None], [], [])
        return obj

    def __init__(self, *args: Any) -> None:  # REDUCE calls the class; its arguments went to __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self._pickled[1][0] = state

    def append(self, value: Any) -> None:
        self._pickled[2].append(value)

    def extend(self, values: Any) -> None:
        self._pickled[2].extend(values)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._pickled[3].append((key, value))

    def __reduce_ex__(self, protocol: Any) -> tuple:
        args, state, listitems, items = self._pickled
        return type(self), args, state[0], iter(listitems), iter(items)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (Stub,), {"__module__": module, "__qualname__": name})


#: torch.load's pickle_module: pickle, with stand-ins for classes of packages not installed.
stubbing_pickle = types.ModuleType("stubbing_pickle")
stubbing_pickle.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")}, Unpickler=_Unpickler)


def describe_file(path: Path) -> tuple[dict, bytes]:
    tree = torch.load(path, weights_only=False, map_location="cpu", pickle_module=stubbing_pickle)
    if isinstance(tree, torch.jit.ScriptModule):
        tree = OrderedDict(tree.state_dict())
    return describe_tree(tree)  # storage records are left out: ptfile.load is compared, not ptfile.open's infos


def main(argv: list[str]) -> int:
    out, files = Path(argv[0]), [Path(a) for a in argv[1:]]
    warnings.simplefilter("ignore")  # torch's notices about TorchScript and legacy files
    for index, path in enumerate(files):
        try:
            meta, blobs = describe_file(path)
        except Exception:  # reported per file: torch itself failing is a finding, not a crash
            (out / f"{index}.error.txt").write_text(traceback.format_exc())
            continue
        meta["file"] = str(path)
        (out / f"{index}.expected.json").write_text(json.dumps(meta))
        (out / f"{index}.expected.bin").write_bytes(blobs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
