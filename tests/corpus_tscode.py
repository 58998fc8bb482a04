"""TorchScript archives whose code records reach files: samples a pattern misses and a parser does not.

Each archive is assembled from bytes (no torch needed): a ``__torch__.M`` module with one
tensor, pickled as TorchScript's C++ pickler writes a class with ``__getstate__`` /
``__setstate__`` (NEWOBJ, then BUILD with the state tuple), so ``torch.jit.load`` compiles
the code record and runs ``__setstate__`` while it loads.  The payload creates the marker
file with ``from_file(marker, True, 1)`` (a shared mapping creates the file) or writes it
with ``torch.save``; ``forward`` payloads run when the loaded module is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from builders import G, Member, Raw, build_zip, emit, program, storage_pid, tensor_v2
from corpus import DANGEROUS, INVALID, MALFORMED, MALICIOUS, Sample, floats

#: The class torch.jit.load compiles; ``{setstate}`` and ``{forward}`` are the payload lines.
SETSTATE_CODE = '''class M(Module):
  __parameters__ = []
  __buffers__ = []
  training : bool
  v : Tensor
  def forward(self: __torch__.M,
    x: Tensor) -> Tensor:
{forward}    v = self.v
    return torch.add(x, v)
  def __getstate__(self: __torch__.M) -> Tuple[Tensor, bool]:
    v = self.v
    training = self.training
    return (v, training)
  def __setstate__(self: __torch__.M,
    state: Tuple[Tensor, bool]) -> NoneType:
{setstate}    self.v = (state)[0]
    self.training = (state)[1]
    return None
'''


def setstate_archive(code: str, code_name: str = "code/__torch__.py", prefix: str = "m") -> bytes:
    """A TorchScript archive whose ``__torch__.M`` is rebuilt through ``__setstate__((v, True))``."""
    tensor = tensor_v2(storage_pid("0", 2), 0, (2,), (1,))
    module = Raw(emit(G("__torch__", "M"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                 + emit((tensor, True), 2) + pickle.BUILD)
    return build_zip([
        Member(f"{prefix}/data.pkl", program(module, 2)),
        Member(f"{prefix}/{code_name}", code.encode()),
        Member(f"{prefix}/constants.pkl", program((), 2)),
        Member(f"{prefix}/data/0", floats(1, 2)),
        Member(f"{prefix}/version", b"6\n"),
        Member(f"{prefix}/byteorder", b"little"),
    ])


def code_with(setstate: str = "", forward: str = "") -> str:
    """:data:`SETSTATE_CODE` with payload lines (4-space indented, one per line) in either method."""
    def lines(text: str) -> str:
        return "".join(f"    {line}\n" for line in text.splitlines())

    return SETSTATE_CODE.format(setstate=lines(setstate), forward=lines(forward))


def payloads(marker: Path) -> dict[str, tuple[str, str, bool]]:
    """name -> (``__setstate__`` lines, ``forward`` lines, whether torch compiles and runs them as written).

    A tensor from ``from_file`` is used (added to ``self.v`` or ``x``): TorchScript drops unused pure calls.
    """
    m = str(marker)
    keep = "self.v = torch.add((state)[0], torch.sum(_0))"
    return {
        "ops-aten-from_file": (f'_0 = ops.aten.from_file("{m}", True, 1)\n{keep}', "", True),
        "torch-space-from_file": (f'_0 = torch .from_file("{m}", True, 1)\n{keep}', "", True),
        "torch-from_file-keywords": (f'_0 = torch.from_file("{m}", shared=True, size=1)\n{keep}', "", True),
        "alias-from_file": (f'_1 = torch.from_file\n_0 = _1("{m}", True, 1)\n{keep}', "", True),
        "alias-namespace": (f'_1 = ops.aten\n_0 = _1.from_file("{m}", True, 1)\n{keep}', "", True),
        "torch-autograd-from_file": (f'_0 = torch.autograd.from_file("{m}", True, 1)\n{keep}', "", True),
        "getattr-from_file": (f'_0 = getattr(torch, "from_file")("{m}", True, 1)\n{keep}', "", True),
        "torch-save": (f'torch.save((state)[0], "{m}")', "", True),
        "torch-save-in-forward": ("", f'torch.save(x, "{m}")', True),
        "from_file-in-forward": ("", f'_0 = torch.from_file("{m}", True, 1)\nx = torch.add(x, torch.sum(_0))', True),
        "torch-load": (f'_0 = torch.load("{m}")', "", False),
        "torch-ops-aten-from_file": (f'_0 = torch.ops.aten.from_file("{m}", True, 1)\n{keep}', "", False),
        "import-alias": (f'_0 = t.from_file("{m}", True, 1)\n{keep}', "", False),
        "unknown-op": (f'_0 = ops.c10d.barrier("{m}")', "", False),
    }


def live_samples(marker: Path) -> dict[str, tuple[bytes, bool]]:
    """sample name -> (archive, True when ``__setstate__`` runs the payload inside torch.jit.load)."""
    out: dict[str, tuple[bytes, bool]] = {}
    for name, (setstate, forward, live) in payloads(marker).items():
        code = code_with(setstate, forward)
        if name == "import-alias":
            code = "import torch as t\n" + code
        out[f"TS-{name}.pt"] = setstate_archive(code), live and bool(setstate)
    setstate = payloads(marker)["ops-aten-from_file"][0]
    for code_name in ("code/__torch__.PY", "CODE/__torch__.py"):
        out[f"TS-case-{code_name.replace('/', '-')}.pt"] = setstate_archive(code_with(setstate), code_name), True
    return out


def samples(marker: Path) -> list[Sample]:
    out = []
    for name, (data, live) in live_samples(marker).items():
        how = "runs while torch.jit.load rebuilds the module" if live else "would run if called or compiled"
        out.append(Sample(name, "C7", MALICIOUS, (DANGEROUS,), f"TorchScript code reaching a file ({how})", data))
    bad = code_with("_0 = torch.relu(self.v\n")  # an unclosed call: not Python syntax, so not judged
    out.append(Sample("TS-unparsable-code.pt", "C7", MALFORMED, (INVALID,),
                      "a code record that does not parse", setstate_archive(bad)))
    return out


__all__ = ["samples", "live_samples", "setstate_archive", "code_with", "SETSTATE_CODE"]
