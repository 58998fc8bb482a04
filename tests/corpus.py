"""A scanner corpus: one sample per attack class of the security notes, plus benign checkpoints.

Every hostile sample is assembled from raw bytes (``builders``) around a harmless payload:
the command or code it would run only creates a marker file, so a test can prove that
nothing ran by checking that the marker never appears.  Benign samples are the torch-written
fixtures of ``tests/fixtures`` (state dicts, optimizer and training checkpoints, legacy and
tar files, TorchScript, whole pickled models, quantized and sparse tensors, DCP folders),
plain pickles of ordinary data, and Hugging Face shard folders written by ``ptfile.save_sharded``.

Each :class:`Sample` says what a correct scanner should call it:

* ``malicious``: a pickle or archive that runs the payload (or hands code to a loader that
  would) under CPython's ``pickle`` or torch.  ``expect`` is ``dangerous``, or also ``invalid``
  where the notes allow refusing it as malformed (a payload hidden inside a parse fault).
* ``malformed``: attacks on parsers and memory (section 2 D and E, zip bombs, bad storage
  keys): no code, but a reader must refuse or bound them.  Never ``clean``, except where
  the file is a well-formed pickle ptfile reads in bounded memory (a billion-laughs DAG).
* ``benign``: never ``dangerous``; ``expect`` holds ptfile's verdict (``clean``, ``unknown-class``
  for whole pickled models, ``invalid`` for archives ``load`` cannot open).

:func:`build_corpus` returns the samples; :func:`write_corpus` writes them to a folder
with a ``manifest.json``.  ``benchmarks/scan_corpus.py`` is the command-line front end.
"""

from __future__ import annotations

import io
import json
import pickle
import shlex
import shutil
import struct
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # imported from benchmarks/ as well as from the test suite
    sys.path.insert(0, str(TESTS))

from builders import (  # noqa: E402
    ORDERED_DICT,
    REBUILD_V3,
    Call,
    G,
    Member,
    Raw,
    binunicode,
    build_zip,
    emit,
    frame,
    frame_header,
    glob,
    legacy_stream,
    mark_tuple,
    program,
    proto,
    sbu,
    stack_global,
    state_dict,
    storage_pid,
    tar_archive,
    tensor_v2,
    torch_members,
    torch_zip,
)

FIXTURES = TESTS / "fixtures"
MANIFEST = "manifest.json"
#: Name of the marker file every payload would create, kept beside the corpus.
MARKER_NAME = "PAYLOAD-RAN"

MALICIOUS, MALFORMED, BENIGN = "malicious", "malformed", "benign"
DANGEROUS, INVALID, UNKNOWN, CLEAN = "dangerous", "invalid", "unknown-class", "clean"
REFUSED = (DANGEROUS, INVALID)


@dataclass
class Sample:
    """One corpus entry: a file (``data`` is bytes) or a folder (``data`` maps relative paths to bytes)."""

    name: str
    cls: str  # attack class of the notes (A1 ... E5), or "benign"
    label: str  # MALICIOUS, MALFORMED or BENIGN
    expect: tuple[str, ...]  # the verdicts a correct scanner may give
    about: str
    data: bytes | dict[str, bytes] = field(repr=False, default=b"")

    def manifest(self) -> dict[str, Any]:
        entry = asdict(self)
        del entry["data"]
        entry["expect"] = list(self.expect)
        entry["kind"] = "folder" if isinstance(self.data, dict) else "file"
        return entry


# -- payloads ----------------------------------------------------------------------------------


def _cmd(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def os_system(marker: Path) -> Call:
    return G("os", "system")(_cmd(marker))


def floats(*values: float) -> bytes:
    return np.array(values, dtype=np.float32).tobytes()


def _tensor_state() -> tuple[Raw, dict[str, bytes]]:
    """A small state dict (a parameter, a bias and a view of the first storage) and its storages."""
    weight, bias = storage_pid("0", 6), storage_pid("1", 2)
    tree = state_dict(
        {
            "fc.weight": Call(G("torch._utils", "_rebuild_parameter"),
                              (tensor_v2(weight, 0, (2, 3), (3, 1)), True, Call(ORDERED_DICT, ()))),
            "fc.bias": tensor_v2(bias, 0, (2,), (1,)),
        },
        {"": {"version": 1}},
    )
    return tree, {"0": floats(0, 1, 2, 3, 4, 5), "1": floats(-1, 1)}


def benign_members() -> list[Member]:
    tree, storages = _tensor_state()
    return torch_members(program(tree, 2), storages)


def in_zip(pickle_bytes: bytes, storages: dict[str, bytes] | None = None, **options: Any) -> bytes:
    return torch_zip(pickle_bytes, storages, **options)


def _sleepy(marker: Path, protocol: int = 2) -> bytes:
    """Sleepy-pickle style: a real state dict with one call slipped in before the tensors."""
    tree, _ = _tensor_state()
    return program({"hook": os_system(marker), "state_dict": tree}, protocol)


def _typical_evil_checkpoint(marker: Path) -> bytes:
    tree, storages = _tensor_state()
    return in_zip(program({"state_dict": tree, "hook": os_system(marker)}, 2), storages)


# -- A: dangerous callables ---------------------------------------------------------------------


def _a_samples(marker: Path) -> list[Sample]:
    from test_hostile import A1, GADGETS

    out = []
    for index, (name, (build, _)) in enumerate(sorted(A1.items())):
        protocol = (0, 2, 4)[index % 3]
        out.append(Sample(f"A1-{name}-p{protocol}.pt", "A1", MALICIOUS, (DANGEROUS,), f"{name} call at protocol {protocol}",
                          in_zip(program(build(marker), protocol))))
    for protocol in (0, 4):  # os.system again at the protocols its sample above does not use
        out.append(Sample(f"A1-os.system-p{protocol}-raw.pkl", "A1", MALICIOUS, (DANGEROUS,),
                          f"os.system as a bare pickle at protocol {protocol}", program(os_system(marker), protocol)))
    out.append(Sample("A2-commands.getoutput-p0.pt", "A2", MALICIOUS, (DANGEROUS,),
                      "Python 2 name commands.getoutput, rewritten to subprocess.getoutput",
                      in_zip(program(G("commands", "getoutput")(_cmd(marker)), 0))))
    raw = proto(2) + glob("__builtin__", "eval") + binunicode(_code(marker)) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    out.append(Sample("A2-__builtin__.eval-p2.pt", "A2", MALICIOUS, (DANGEROUS,), "__builtin__.eval", in_zip(raw)))
    for index, (case, name, build, protocols) in enumerate(GADGETS):
        protocol = protocols[index % len(protocols)]
        cls = case.split("-", 1)[0]
        out.append(Sample(f"{case}-p{protocol}.pt", cls, MALICIOUS, (DANGEROUS,), f"{name} gadget at protocol {protocol}",
                          in_zip(program(build(marker), protocol))))
    for module, name in (("pathlib", "os.system"), ("torch.serialization", "os.system"),
                         ("collections", "OrderedDict.__init__.__globals__")):
        body = stack_global(module, name) + sbu(_cmd(marker)) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
        out.append(Sample(f"A9-{module}-{name}.pt", "A9", MALICIOUS, (DANGEROUS,),
                          f"STACK_GLOBAL of the dotted name {module}.{name}", in_zip(proto(4) + frame(body))))
    cmd = _cmd(marker)
    calls = {
        "inst": program(Call(G("os", "system"), (cmd,), how="inst"), 0),
        "obj": program(Call(G("os", "system"), (cmd,), how="obj"), 2),
        "obj-pop": program(Raw(emit(Call(G("smtplib", "SMTP"), ("127.0.0.1",), how="obj"), 4) + pickle.POP
                               + pickle.NONE), 4),
        "newobj": program(Call(G("subprocess", "Popen"), (["touch", str(marker)],), how="newobj"), 2),
        "newobj_ex": program(Call(G("subprocess", "Popen"), (), how="newobj_ex",
                                  kwargs={"args": ["touch", str(marker)]}), 4),
        "double-build": program(Raw(emit(G("mymodels", "Thing"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                                    + emit({"__setstate__": G("builtins", "exec")}, 2) + pickle.BUILD
                                    + emit(_code(marker), 2) + pickle.BUILD), 2),
    }
    for how, data in calls.items():
        out.append(Sample(f"A10-{how}.pt", "A10", MALICIOUS, (DANGEROUS,), f"a call through {how}, not REDUCE",
                          in_zip(data)))
    out.append(Sample("A-sleepy-state-dict.pt", "A1", MALICIOUS, (DANGEROUS,),
                      "a real state dict with os.system slipped in (Sleepy Pickle)", _typical_evil_checkpoint(marker)))
    return out


# -- B: pickle-level tricks ---------------------------------------------------------------------


def _legacy_magic_by_eval() -> bytes:
    return program(G("builtins", "eval")(hex(0x1950A86A20F9469CFC6C)), 2)


def _b_samples(marker: Path) -> list[Sample]:
    evil = program(os_system(marker), 2)
    payload = evil[:-1]  # everything up to STOP

    def remember(value: str, slot: int) -> bytes:
        return binunicode(value) + pickle.BINPUT + bytes([slot]) + pickle.POP

    shuffle = (proto(4) + remember("os", 2) + remember("system", 3) + remember("torch", 0)
               + remember("LongStorage", 1) + pickle.BINGET + b"\x02" + pickle.BINGET + b"\x03" + pickle.STACK_GLOBAL
               + mark_tuple(binunicode(_cmd(marker))) + pickle.REDUCE + pickle.STOP)
    from_string = (b"S'os'\nS'system'\n" + pickle.STACK_GLOBAL + b"S" + repr(_cmd(marker)).encode() + b"\n"
                   + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    hidden = (glob("builtins", "exec") + binunicode(_code(marker)) + pickle.TUPLE1 + pickle.REDUCE + pickle.MARK)
    hidden = hidden.ljust(0x107 + 2, pickle.NONE)
    straddle = (proto(5) + pickle.NONE + binunicode("a" * (131072 - 17)) + pickle.POP + pickle.MARK + frame_header(2)
                + pickle.BINBYTES + struct.pack("<I", 0x107) + hidden + pickle.POP_MARK + pickle.STOP)
    tree, storages = _tensor_state()
    polyglot = evil + in_zip(program(tree, 2), storages)
    zip_member_txt = build_zip([Member("archive/data.txt", evil), Member("archive/version", b"3\n")])
    return [
        Sample("B1-memo-shuffle.pt", "B1", MALICIOUS, (DANGEROUS,), "STACK_GLOBAL operands fetched from a shuffled memo",
               in_zip(shuffle)),
        Sample("B2-string-operands.pt", "B2", MALICIOUS, (DANGEROUS,), "STACK_GLOBAL operands pushed by STRING",
               in_zip(from_string)),
        Sample("B3-missing-memo-after-payload.pkl", "B3", MALICIOUS, REFUSED,
               "payload, then a BINGET of a memo key never stored (the unpickler fails after the call)",
               payload + pickle.POP + pickle.BINGET + b"\x07" + pickle.STOP),
        Sample("B3-memo-poison.pkl", "B3", MALICIOUS, REFUSED,
               "modelscan memo-poison: POP then BINPUT on an empty stack, after the payload",
               payload + pickle.POP + pickle.NONE + pickle.POP + pickle.BINPUT + b"\x00" + pickle.NONE + pickle.STOP),
        Sample("B4-nullifai-zero-byte.pt", "B4", MALICIOUS, REFUSED, "payload then an invalid opcode (nullifAI)",
               in_zip(payload + b"\x00")),
        Sample("B4-truncated.pkl", "B4", MALICIOUS, REFUSED, "payload, then the pickle simply ends", payload),
        Sample("B5-stacked.pkl", "B5", MALICIOUS, (DANGEROUS,), "a benign pickle followed by a malicious one",
               program({"lr": 0.1}, 2) + evil),
        Sample("B5-legacy-pickle5.pt", "B5", MALICIOUS, REFUSED,
               "legacy stream with the payload as pickle #5 (the storage keys)",
               legacy_stream(program({"x": 1}, 2), keys_pickle=evil)),
        Sample("B5-legacy-pickle4.pt", "B5", MALICIOUS, (DANGEROUS,), "legacy stream with the payload as the object",
               legacy_stream(_sleepy(marker))),
        Sample("B6-frame-straddle.pt", "B6", MALICIOUS, REFUSED,
               "a call hidden in bytes that straddle a frame's end (cpython gh-154848)", in_zip(straddle)),
        Sample("B7-stack-left-over.pkl", "B7", MALICIOUS, REFUSED, "STOP with the payload's result still on the stack",
               proto(2) + emit(os_system(marker), 2) + pickle.NONE + pickle.STOP),
        Sample("B7-late-proto.pt", "B7", MALICIOUS, REFUSED, "the payload, then a PROTO that is not first",
               in_zip(emit(os_system(marker), 2) + pickle.POP + proto(2) + pickle.NONE + pickle.STOP)),
        Sample("B8-legacy-magic-by-eval.pt", "B8", MALICIOUS, (DANGEROUS,),
               "legacy magic computed by eval in pickle #1, payload in pickle #5",
               legacy_stream(program({"x": 1}, 2), magic=_legacy_magic_by_eval(), keys_pickle=evil)),
        Sample("B9-plain-pickle.bin", "B9", MALICIOUS, (DANGEROUS,), "a plain pickle named .bin", evil),
        Sample("B9-protocol0.pth", "B9", MALICIOUS, (DANGEROUS,), "a protocol-0 pickle (no PROTO opcode) named .pth",
               program(os_system(marker), 0)),
        Sample("B9-plain-pickle.ckpt", "B9", MALICIOUS, (DANGEROUS,), "a Sleepy-pickle state dict named .ckpt",
               _sleepy(marker, 4)),
        Sample("B9-zip-member-data.txt.pt", "B9", MALICIOUS, REFUSED, "the pickle stored in the zip as data.txt",
               zip_member_txt),
        Sample("B9-polyglot.pt", "B9", MALICIOUS, (DANGEROUS,),
               "pickle/zip polyglot: torch's non-zip path runs the leading pickle", polyglot),
        Sample("B10-eop-bad-utf8.pt", "B10", MALICIOUS, REFUSED, "payload, then a BINUNICODE of invalid UTF-8",
               in_zip(payload + pickle.BINUNICODE + b"\x02\x00\x00\x00\xff\xfe" + pickle.STOP)),
        Sample("B10-eop-bad-call.pt", "B10", MALICIOUS, REFUSED, "payload, then a REDUCE on an int (TypeError)",
               in_zip(payload + pickle.POP + emit(5, 2) + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP)),
    ]


# -- C: containers ---------------------------------------------------------------------------------


def _evil_members(marker: Path) -> list[Member]:
    return torch_members(program(os_system(marker), 2))


def _torchscript(code: str, constants: bytes | None = None) -> bytes:
    """A TorchScript-like archive: a ``__torch__`` module with one parameter, its code, constants."""
    module = Raw(emit(G("__torch__", "M"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                 + emit({"training": True, "w": Call(G("torch._utils", "_rebuild_parameter"),
                                                     (tensor_v2(storage_pid("0", 2), 0, (2,), (1,)), True,
                                                      Call(ORDERED_DICT, ())))}, 2) + pickle.BUILD)
    return build_zip([
        Member("m/data.pkl", program(module, 2)),
        Member("m/code/__torch__.py", code.encode()),
        Member("m/constants.pkl", constants if constants is not None else program((), 2)),
        Member("m/data/0", floats(1, 2)),
        Member("m/version", b"6\n"),
        Member("m/byteorder", b"little"),
    ])


TORCHSCRIPT_SAVE = '''class M(Module):
  __parameters__ = ["w", ]
  __buffers__ = []
  w : Tensor
  training : bool
  def forward(self: __torch__.M,
    x: Tensor) -> Tensor:
    return torch.mul(x, self.w)
  def items(self: __torch__.M) -> List[int]:
    w = self.w
    torch.save(w, "{target}")
    return [1]
'''

TORCHSCRIPT_BENIGN = '''class M(Module):
  __parameters__ = ["w", ]
  __buffers__ = []
  w : Tensor
  training : bool
  def forward(self: __torch__.M,
    x: Tensor) -> Tensor:
    return torch.mul(x, self.w)
'''


def torchscript_save_sample(marker: Path) -> bytes:
    """CVE-2025-32434's shape: TorchScript whose exported method calls ``torch.save`` on a path."""
    return _torchscript(TORCHSCRIPT_SAVE.format(target=marker))


def _seven_zip(members: dict[str, bytes]) -> bytes | None:
    try:
        import py7zr
    except ImportError:
        return None
    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return out.getvalue()


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def _c_samples(marker: Path) -> list[Sample]:
    evil = program(os_system(marker), 2)
    out = []
    evil_zip = _typical_evil_checkpoint(marker)
    seven = _seven_zip({"model.pt": evil_zip})
    if seven is not None:
        out.append(Sample("C1-7z-checkpoint.7z", "C1", MALICIOUS, REFUSED,
                          "nullifAI: the malicious checkpoint recompressed as 7z", seven))
        out.append(Sample("C1-7z-named.pt", "C1", MALICIOUS, REFUSED, "the same 7z archive named .pt", seven))
    out.append(Sample("C1-gzip-tar.tar.gz", "C1", MALICIOUS, REFUSED, "the malicious checkpoint in a tar.gz",
                      _gzip(tar_archive({"model/model.pt": evil_zip}))))
    members = _evil_members(marker)
    for member in members:
        member.crc = 0xDEADBEEF
    out.append(Sample("C2-wrong-crc.pt", "C2", MALICIOUS, (DANGEROUS,), "every CRC wrong (torch loads it anyway)",
                      build_zip(members)))
    members = _evil_members(marker)
    members[0].local_name = "archive/datap.kl"
    out.append(Sample("C3-local-name.pt", "C3", MALICIOUS, (DANGEROUS,), "local name datap.kl, central name data.pkl",
                      build_zip(members)))
    for flags in (0x20, 0x40):
        members = _evil_members(marker)
        members[0].flags = 0x808 | flags
        out.append(Sample(f"C4-flags-{flags:#x}.pt", "C4", MALICIOUS, (DANGEROUS,), f"flag bit {flags:#x} over plain data",
                          build_zip(members)))
    members = _evil_members(marker)
    members[0].flags = 0x809
    out.append(Sample("C4-flags-0x1.pt", "C4", MALICIOUS, REFUSED, "the encryption bit over plain data",
                      build_zip(members)))
    out.append(Sample("C5-duplicate-data.pkl.pt", "C5", MALICIOUS, REFUSED,
                      "two archive/data.pkl records, benign first, malicious second",
                      build_zip([Member("archive/data.pkl", program(7, 2)), *_evil_members(marker)])))
    for label, extra in (("outside-prefix", "other/data.pkl"), ("extra-pkl", "archive/extra.pkl"),
                         ("debug-pkl", "archive/code/x.debug_pkl"), ("any-name", "archive/notes.txt")):
        out.append(Sample(f"C6-{label}.pt", "C6", MALICIOUS, REFUSED,
                          f"a benign checkpoint plus a malicious record {extra}",
                          build_zip([*benign_members(), Member(extra, evil)])))
    out.append(Sample("C6-evil-prefix-first.pt", "C6", MALICIOUS, (DANGEROUS,),
                      "a malicious archive folder listed first, a benign one after it",
                      build_zip([*torch_members(evil, prefix="evil"), *benign_members()])))
    out.append(Sample("C6-pickle-before-zip.pt", "C6", MALICIOUS, (DANGEROUS,),
                      "a malicious pickle in the bytes before the first local header",
                      build_zip(benign_members(), head=evil)))
    out.append(Sample("C6-pytorch1-magic.pt", "C6", MALICIOUS, REFUSED,
                      "the PYTORCH1 preview magic in front of a malicious archive",
                      b"PYTORCH1" + build_zip(_evil_members(marker))))
    out.append(Sample("C7-torchscript-torch.save.pt", "C7", MALICIOUS, (DANGEROUS,),
                      "TorchScript whose exported method calls torch.save (CVE-2025-32434)",
                      torchscript_save_sample(marker)))
    out.append(Sample("C7-torchscript-constants.pt", "C7", MALICIOUS, (DANGEROUS,),
                      "TorchScript with a malicious constants.pkl", _torchscript(TORCHSCRIPT_BENIGN, evil)))
    package = build_zip([
        Member("pkg/.data/version", b"6\n"),
        Member("pkg/.data/extern_modules", b"torch\n"),
        Member("pkg/models/net.py", f"import os\nos.system({_cmd(marker)!r})\nclass Net: pass\n".encode()),
        Member("pkg/model/model.pkl", program(Raw(emit(G("models.net", "Net"), 2) + pickle.EMPTY_TUPLE
                                                  + pickle.NEWOBJ), 2)),
    ])
    out.append(Sample("C7-torch-package.pt", "C7", MALICIOUS, REFUSED,
                      "torch.package archive whose packaged module runs os.system on import", package))
    tar_common = {"sys_info": program({"protocol_version": 1000, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2),
                  "pickle": program({"x": 1}, 2), "tensors": program(0, 2), "storages": program(0, 2) + program([], 2)}
    out.append(Sample("C8-tar-pickle.tar", "C8", MALICIOUS, (DANGEROUS,), "legacy tar with the payload in 'pickle'",
                      tar_archive({**tar_common, "pickle": program({"x": 1, "hook": os_system(marker)}, 2)})))
    out.append(Sample("C8-tar-storages.pt", "C8", MALICIOUS, REFUSED, "legacy tar with the payload in 'storages'",
                      tar_archive({**tar_common, "storages": evil + program([], 2)})))
    out.append(Sample("C10-zip-in-zip.pt", "C10", MALICIOUS, REFUSED,
                      "the object pickle record holds a malicious torch zip", in_zip(evil_zip)))
    out.append(Sample("C10-zip-of-pickles.zip", "C10", MALICIOUS, REFUSED,
                      "a plain zip (no archive folder) holding a malicious pickle",
                      build_zip([Member("weights.pkl", evil)])))
    return out


def _malformed_samples() -> list[Sample]:
    """C9, C10, D and E: no code, but readers must refuse or bound them."""
    def tensor_file(tensor: Call, storages: dict | None = None) -> bytes:
        return in_zip(program({"t": tensor}, 2), storages if storages is not None else {"0": floats(*range(10))})

    pid = storage_pid("0", 10)
    tensor = tensor_v2(pid, 0, (10,), (1,))
    storage = b"\0" * (1 << 16)
    keys = [str(i) for i in range(20)]
    overlapping = torch_members(program([tensor_v2(storage_pid(k, len(storage), "ByteStorage"), 0, (len(storage),), (1,))
                                         for k in keys], 2), {"0": storage})
    aliases = [Member(f"archive/data/{k}", alias_of="archive/data/0") for k in keys[1:]]
    false_size = benign_members()
    false_size[0].zip64 = True
    false_size[0].central_size = false_size[0].central_csize = 1 << 62
    laughs = pickle.MARK * 9 + binunicode("lol") + (pickle.DUP * 9 + pickle.LIST) * 9
    refuse = REFUSED
    return [
        Sample("C9-storage-key-traversal.pt", "C9", MALFORMED, refuse, "storage key '../../x' in the persistent id",
               in_zip(program(tensor_v2(storage_pid("../../x", 2), 0, (2,), (1,)), 2), {"0": floats(1, 2)})),
        Sample("C10-overlapping-entries.pt", "C10", MALFORMED, refuse, "20 central entries pointing at one record",
               build_zip([*overlapping, *aliases])),
        Sample("C10-false-zip64-size.pt", "C10", MALFORMED, refuse, "a ZIP64 size of 2**62",
               build_zip(false_size)),
        Sample("D1-storage-past-record.pt", "D1", MALFORMED, refuse, "a storage of 256 int64 over an 80-byte record",
               tensor_file(tensor_v2(storage_pid("0", 256, "LongStorage"), 0, (256,), (1,)), {"0": bytes(80)})),
        Sample("D2-view-out-of-bounds.pt", "D2", MALFORMED, refuse, "a view reaching past its storage",
               tensor_file(tensor_v2(pid, 0, (2**62,), (1,)))),
        Sample("D3-setitems-on-tensor.pt", "D3", MALFORMED, refuse, "SETITEMS writing into a tensor",
               in_zip(program(Raw(emit(tensor, 2) + pickle.MARK + emit(0, 2) + emit(99, 2) + pickle.SETITEMS), 2),
                      {"0": floats(*range(10))})),
        Sample("D4-dtype-mismatch.pt", "D4", MALFORMED, refuse, "_rebuild_tensor_v3 dtype differs from its storage",
               tensor_file(Call(REBUILD_V3, (pid, 0, (10,), (1,), False, Call(ORDERED_DICT, ()), G("torch", "float16"))))),
        Sample("D5-text-persid.pt", "D5", MALFORMED, refuse, "a text PERSID", in_zip(program(Raw(pickle.PERSID + b"0\n"), 0))),
        Sample("E1-billion-laughs.pt", "E1", MALFORMED, (CLEAN, INVALID),
               "10**9 leaves from ~200 bytes; read as a shared DAG in bounded memory",
               in_zip(proto(2) + laughs + pickle.STOP)),
        Sample("E2-huge-put.pt", "E2", MALFORMED, refuse, "PUT with an index past sys.maxsize",
               in_zip(pickle.NONE + pickle.PUT + b"99999999999999999999\n" + pickle.STOP)),
        Sample("E3-binunicode8-2e63.pt", "E3", MALFORMED, refuse, "a BINUNICODE8 declaring 2**63-1 bytes",
               in_zip(proto(5) + pickle.BINUNICODE8 + struct.pack("<Q", 2**63 - 1) + b"abc" + pickle.STOP)),
        Sample("E4-deep-marks.pt", "E4", MALFORMED, refuse, "10**5 nested MARKs",
               in_zip(proto(2) + pickle.MARK * 10**5 + pickle.NONE + pickle.STOP)),
        Sample("E5-ext1.pt", "E5", MALFORMED, refuse, "EXT1: a copyreg registry lookup bypassing GLOBAL",
               in_zip(proto(5) + pickle.EXT1 + b"\x01" + pickle.STOP)),
    ]


def _d_payload_samples(marker: Path) -> list[Sample]:
    pid = storage_pid("0", 10)
    hooks = Raw(emit(Call(ORDERED_DICT, ()), 2) + emit(1, 2) + emit(os_system(marker), 2) + pickle.SETITEM)
    from_type = Call(G("torch._tensor", "_rebuild_from_type_v2"), (os_system(marker), G("torch", "Tensor"), (), {}))
    return [
        Sample("D4-backward-hooks-call.pt", "D4", MALICIOUS, (DANGEROUS,), "os.system inside a tensor's backward hooks",
               in_zip(program({"t": tensor_v2(pid, 0, (10,), (1,), hooks=hooks)}, 2), {"0": floats(*range(10))})),
        Sample("D4-rebuild-from-type-call.pt", "D4", MALICIOUS, (DANGEROUS,),
               "_rebuild_from_type_v2 whose function is os.system",
               in_zip(program({"t": from_type}, 2), {"0": floats(*range(10))})),
        Sample("D5-legacy-module-pid.pt", "D5", MALFORMED, REFUSED,
               "legacy ('module', cls, file, source) persistent id",
               in_zip(program(Raw(emit(("module", G("mymodels", "Net"), "net.py", "source"), 2) + pickle.BINPERSID), 2))),
    ]


# -- benign ----------------------------------------------------------------------------------------

#: Torch-written fixtures and what ptfile says about each (whole pickled models are unknown classes).
FIXTURE_FILES = {
    "state_dict.pt": CLEAN, "optimizer.pt": CLEAN, "training.pt": CLEAN, "parameters.pt": CLEAN,
    "shared.pt": CLEAN, "views.pt": CLEAN, "dtypes.pt": CLEAN, "buffer.pt": CLEAN, "no_crc.pt": CLEAN,
    "align4096.pt": CLEAN, "conj_neg.pt": CLEAN, "edge_shapes.pt": CLEAN, "renamed.weights.pt": CLEAN,
    "legacy/state_dict.pt": CLEAN, "legacy/training.pt": CLEAN, "legacy/views.pt": CLEAN,
    "legacy/protocol1.pt": CLEAN, "legacy/protocol4.pt": CLEAN, "legacy/ancient.tar.pt": CLEAN,
    "legacy/module.pt": UNKNOWN, "formats/scripted.pt": CLEAN, "formats/quantized.pt": CLEAN,
    "formats/sparse.pt": CLEAN, "formats/subclass.pt": UNKNOWN, "formats/metadata.pt": CLEAN,
    "formats/protocol1.pt": CLEAN,
}
FIXTURE_FOLDERS = {"dcp/single": CLEAN, "dcp/ranks2": CLEAN}


def _fixture_samples() -> list[Sample]:
    out = []
    for rel, verdict in FIXTURE_FILES.items():
        name = "benign-" + rel.replace("/", "-")
        out.append(Sample(name, "benign", BENIGN, (verdict,), f"torch-written fixture {rel}",
                          (FIXTURES / rel).read_bytes()))
    for rel, verdict in FIXTURE_FOLDERS.items():
        folder = FIXTURES / rel
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        out.append(Sample("benign-" + rel.replace("/", "-"), "benign", BENIGN, (verdict,),
                          f"torch.distributed.checkpoint folder {rel}", files))
    return out


def _shards() -> dict[str, bytes]:
    import tempfile

    import ptfile

    rng = np.random.default_rng(0)
    state = OrderedDict((f"layer{i}.weight", rng.standard_normal((4, 4)).astype(np.float32)) for i in range(4))
    with tempfile.TemporaryDirectory() as folder:
        ptfile.save_sharded(state, folder, max_shard_size=200)
        return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _benign_built() -> list[Sample]:
    tree, storages = _tensor_state()
    checkpoint = in_zip(program(tree, 2), storages)
    namespace = Raw(emit(G("argparse", "Namespace"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                    + emit({"lr": 0.5, "name": "run"}, 2) + pickle.BUILD)
    scalar = Raw(pickle.dumps(np.float64(2.5), 2)[2:-1])
    training = in_zip(program({"model": tree, "args": namespace, "best": scalar, "epoch": 3}, 2), storages)
    model = Raw(emit(G("mymodels", "Net"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ + emit({"depth": 3}, 2) + pickle.BUILD)
    data = {"lr": 0.001, "steps": [1, 2, 3], "name": "run", "nested": {"a": (1, 2.5, None, True)}}
    out = [
        Sample("benign-built-state-dict.pt", "benign", BENIGN, (CLEAN,), "state dict with _metadata, built from bytes",
               checkpoint),
        Sample("benign-built-training.pt", "benign", BENIGN, (CLEAN,), "Namespace args and a numpy scalar", training),
        Sample("benign-built-unknown-class.pt", "benign", BENIGN, (UNKNOWN,), "an instance of a class ptfile does not know",
               in_zip(program({"model": model}, 2))),
        Sample("benign-legacy-built.pt", "benign", BENIGN, (CLEAN,), "legacy stream built from bytes",
               legacy_stream(program({"x": 1, "w": [1.5, 2.5]}, 2))),
        Sample("benign-numpy-array.pkl", "benign", BENIGN, (CLEAN,), "a numpy array pickled by numpy",
               pickle.dumps(np.arange(6, dtype=np.float32).reshape(2, 3), 2)),
        Sample("benign-checkpoint.tar.gz", "benign", BENIGN, (INVALID,),
               "a benign checkpoint in a tar.gz (not a format load reads)", _gzip(tar_archive({"model.pt": checkpoint}))),
        Sample("benign-shards", "benign", BENIGN, (CLEAN,), "a Hugging Face shard folder (index + shards)", _shards()),
        Sample("benign-torchscript-built.pt", "benign", BENIGN, (CLEAN,), "TorchScript-like archive with plain code",
               _torchscript(TORCHSCRIPT_BENIGN)),
    ]
    for protocol in range(6):
        out.append(Sample(f"benign-data-p{protocol}.pkl", "benign", BENIGN, (CLEAN,),
                          f"plain data pickled at protocol {protocol}", pickle.dumps(data, protocol)))
    seven = _seven_zip({"model.pt": checkpoint})
    if seven is not None:
        out.append(Sample("benign-checkpoint.7z", "benign", BENIGN, (INVALID,), "a benign checkpoint in a 7z archive",
                          seven))
    return out


# -- the corpus ------------------------------------------------------------------------------------


def build_corpus(marker: Path) -> list[Sample]:
    """Every sample; each payload would create ``marker`` if any of it ran."""
    samples = [*_a_samples(marker), *_b_samples(marker), *_c_samples(marker), *_d_payload_samples(marker),
               *_malformed_samples(), *_fixture_samples(), *_benign_built()]
    samples.extend(__import__("corpus_oracle").samples(marker))  # DCP's loader as a consumer
    names = [s.name for s in samples]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return samples


def write_corpus(folder: Path) -> list[Sample]:
    """Write the corpus and ``manifest.json`` into ``folder``; the payloads target ``folder/PAYLOAD-RAN``."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder.resolve() / MARKER_NAME
    samples = build_corpus(marker)
    for sample in samples:
        path = folder / sample.name
        if isinstance(sample.data, dict):
            if path.exists():
                shutil.rmtree(path)
            path.mkdir()
            for rel, data in sample.data.items():
                (path / rel).write_bytes(data)
        else:
            path.write_bytes(sample.data)
    manifest = {"marker": MARKER_NAME, "samples": [s.manifest() for s in samples]}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return samples


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / MANIFEST).read_text())["samples"]


__all__ = ["Sample", "build_corpus", "write_corpus", "read_manifest", "MARKER_NAME", "os_system",
           "torchscript_save_sample", "FIXTURES", "MALICIOUS", "MALFORMED", "BENIGN"]
