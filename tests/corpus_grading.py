"""Corpus samples for the four levels of findings and the scanner's completeness.

* A call of an unknown global (an Enum member, pickled as ``Problem(1)``) that wraps a
  known gadget: the gadget decides, ``dangerous``.
* Gadgets the grading table names one by one inside allowlisted or ordinary modules.
* A torch.package archive whose pickle calls a gadget; a torch zip inside ``data.pkl``
  whose own pickle record claims encryption: both examined, both ``dangerous``.
* A file torch 0.4 wrote (``backward_hooks`` pickled as ``None``): benign and ``clean``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from builders import (
    REBUILD_V2,
    Call,
    G,
    Member,
    Raw,
    build_zip,
    emit,
    legacy_stream,
    program,
    state_dict,
    torch_members,
)
from corpus import BENIGN, CLEAN, DANGEROUS, MALICIOUS, Sample, _cmd, floats, in_zip, os_system


def _legacy_pid(key: str, numel: int) -> Raw:
    """BINPERSID of the legacy stream's ``('storage', torch.FloatStorage, key, 'cpu', numel, None)``."""
    return Raw(emit(("storage", G("torch", "FloatStorage"), key, "cpu", numel, None), 2) + pickle.BINPERSID)


def _torch04() -> bytes:
    weight = Call(REBUILD_V2, (_legacy_pid("0", 4), 0, (2, 2), (2, 1), False, None))
    parameter = G("torch._utils", "_rebuild_parameter")(weight, True, None)
    return legacy_stream(program(state_dict({"lin.weight": parameter}), 2), {"0": floats(1, 2, 3, 4)})


def samples(marker: Path) -> list[Sample]:
    """The samples; each payload would create ``marker`` if any of it ran."""
    evil = program(os_system(marker), 2)
    enum_wrapping_gadget = program({"hparams": G("hparams", "Problem")(os_system(marker))}, 2)
    runstring = program(G("numpy.testing._private.utils", "runstring")(f"import os; os.system({_cmd(marker)!r})", {}), 2)
    dotted_import = program(G("torch._utils", "_import_dotted_name")("os.system")(_cmd(marker)), 2)
    package = build_zip([
        Member("pkg/.data/version", b"6\n"),
        Member("pkg/.data/extern_modules", b"torch\n"),
        Member("pkg/model/model.pkl", evil),
    ])
    inner = torch_members(evil)
    inner[0].flags = 0x809  # the encryption bit over a stored pickle
    encrypted_in_zip = in_zip(build_zip(inner))
    return [
        Sample("grading-enum-call-wrapping-gadget.pt", "A1", MALICIOUS, (DANGEROUS,),
               "an unknown global (an Enum) called with the result of os.system", in_zip(enum_wrapping_gadget)),
        Sample("grading-numpy-runstring.pkl", "A4", MALICIOUS, (DANGEROUS,),
               "numpy.testing's runstring runs a statement given as text", runstring),
        Sample("grading-torch-import-dotted-name.pt", "A7", MALICIOUS, (DANGEROUS,),
               "torch._utils._import_dotted_name, beside the allowed rebuild functions, resolves os.system",
               in_zip(dotted_import)),
        Sample("grading-torch-package-pickle.pt", "C7", MALICIOUS, (DANGEROUS,),
               "a torch.package archive whose model pickle calls os.system", package),
        Sample("grading-encrypted-flag-in-nested-zip.pt", "C10", MALICIOUS, (DANGEROUS,),
               "data.pkl holds a torch zip whose pickle record claims encryption over stored bytes",
               encrypted_in_zip),
        Sample("grading-torch04-hooks-none.pth", "benign", BENIGN, (CLEAN,),
               "a legacy stream as torch 0.4 wrote it: backward hooks pickled as None", _torch04()),
    ]
