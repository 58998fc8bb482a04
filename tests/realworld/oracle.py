"""What torch reads from real-world checkpoints, described as the golden fixtures are.

    python tests/realworld/oracle.py OUT_DIR FILE...

Writes ``OUT_DIR/<i>.expected.json`` and ``<i>.expected.bin`` for the i-th FILE (the format
of ``tests/fixtures/make_fixtures.py``), or ``<i>.error.txt`` when torch cannot read it.
It runs ``torch.load(weights_only=False)``, so it is only ever given the pinned,
hash-verified files of ``fetch.py``, and in a process of its own.  A TorchScript archive
is described by its module's ``state_dict()``, which is what ``ptfile.open`` lists.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))

import torch  # noqa: E402
from make_fixtures import describe_tree, storage_keys  # noqa: E402


def describe_file(path: Path) -> tuple[dict, bytes]:
    tree = torch.load(path, weights_only=False, map_location="cpu")
    if isinstance(tree, torch.jit.ScriptModule):
        return describe_tree(OrderedDict(tree.state_dict()))
    keys = storage_keys(path) if zipfile.is_zipfile(path) else None  # legacy streams have no records
    return describe_tree(tree, keys)


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
