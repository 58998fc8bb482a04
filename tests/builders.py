"""Byte-level builders for test inputs: pickle opcodes and torch-layout zip archives.

Nothing here imports torch or pickles live objects: every byte is assembled from
the ``pickle`` module's opcode constants and ``struct``, so a test can write any
sequence a hostile file could hold, including ones no pickler would emit.

Pickles
    Small emitters (``proto``, ``glob``, ``text``, ``integer`` ...) return bytes to
    concatenate.  :func:`emit` turns a Python value tree (str, int, bytes, tuples,
    lists, dicts, :class:`G` globals, :class:`Call` reductions) into the opcodes a
    given protocol uses, and :func:`program` wraps it in PROTO ... STOP (and a FRAME
    at protocol 4+), so one payload description yields its protocol 0, 2 and 4 forms.

Zip archives
    :func:`build_zip` writes records the way torch's writer does (STORED, an ``FB``
    padding extra field aligning data to 64 bytes, data descriptors, a ZIP64 end
    record) and lets each :class:`Member` break one rule: a different local name,
    flag bits, a wrong CRC, forced ZIP64 fields, deflate, false sizes, or a central
    entry pointing at another member's local header.  :func:`torch_zip` wraps a
    pickle and storages into the minimal archive ``torch.load`` accepts.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

# -- pickle opcodes ------------------------------------------------------------

#: Modules a protocol < 3 pickler writes under their Python 2 name (pickle's fix_imports).
_PY2_MODULES = {"builtins": "__builtin__"}


def proto(n: int) -> bytes:
    return pickle.PROTO + bytes([n])


def stop() -> bytes:
    return pickle.STOP


def glob(module: str, name: str) -> bytes:
    """GLOBAL: ``c<module>\\n<name>\\n``."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL with both operands as SHORT_BINUNICODE (protocol 4 style)."""
    return sbu(module) + sbu(name) + pickle.STACK_GLOBAL


def sbu(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    assert len(raw) < 256
    return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw


def binunicode(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def unicode0(text: str) -> bytes:
    """Protocol 0 UNICODE: raw-unicode-escape text up to a newline."""
    return pickle.UNICODE + text.replace("\\", "\\u005c").replace("\n", "\\u000a").encode("raw-unicode-escape") + b"\n"


def string0(text: str) -> bytes:
    """Protocol 0 STRING: a quoted, escaped byte string."""
    return pickle.STRING + repr(text.encode("latin-1")).lstrip("b").encode() + b"\n"


def text(value: str, protocol: int) -> bytes:
    if protocol == 0:
        return unicode0(value)
    if protocol >= 4 and len(value.encode("utf-8", "surrogatepass")) < 256:
        return sbu(value)
    return binunicode(value)


def binbytes(value: bytes) -> bytes:
    if len(value) < 256:
        return pickle.SHORT_BINBYTES + bytes([len(value)]) + value
    return pickle.BINBYTES + struct.pack("<I", len(value)) + value


def integer(value: int, protocol: int = 2) -> bytes:
    if protocol == 0:
        return pickle.INT + str(value).encode() + b"\n"
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if 0 <= value < 65536:
        return pickle.BININT2 + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def put(index: int, protocol: int = 2) -> bytes:
    if protocol == 0:
        return pickle.PUT + str(index).encode() + b"\n"
    if index < 256:
        return pickle.BINPUT + bytes([index])
    return pickle.LONG_BINPUT + struct.pack("<I", index)


def get(index: int, protocol: int = 2) -> bytes:
    if protocol == 0:
        return pickle.GET + str(index).encode() + b"\n"
    if index < 256:
        return pickle.BINGET + bytes([index])
    return pickle.LONG_BINGET + struct.pack("<I", index)


def frame(body: bytes) -> bytes:
    return pickle.FRAME + struct.pack("<Q", len(body)) + body


def frame_header(length: int) -> bytes:
    """A FRAME opcode declaring ``length`` bytes, whatever follows it."""
    return pickle.FRAME + struct.pack("<Q", length)


def mark_tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


# -- value trees ----------------------------------------------------------------


@dataclass(frozen=True)
class G:
    """A global, emitted as GLOBAL (protocol < 4) or STACK_GLOBAL (protocol 4+)."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Call:
        return Call(self, args)


@dataclass(frozen=True)
class Call:
    """``func(*args)`` through REDUCE (or ``how`` = "inst", "obj", "newobj", "newobj_ex")."""

    func: Any
    args: tuple
    how: str = "reduce"
    kwargs: dict | None = None

    def __call__(self, *args: Any) -> Call:
        """Call the result of this call (``getattr(...)(...)``)."""
        return Call(self, args)


@dataclass(frozen=True)
class Raw:
    """Opcodes inserted verbatim."""

    data: bytes


def emit(value: Any, protocol: int) -> bytes:  # noqa: C901 - one branch per value kind
    """The opcodes that push ``value`` at ``protocol``."""
    if isinstance(value, Raw):
        return value.data
    if value is None:
        return pickle.NONE
    if value is True or value is False:
        if protocol >= 2:
            return pickle.NEWTRUE if value else pickle.NEWFALSE
        return pickle.INT + (b"01\n" if value else b"00\n")
    if type(value) is int:
        return integer(value, protocol)
    if type(value) is float:
        if protocol == 0:
            return pickle.FLOAT + repr(value).encode() + b"\n"
        return pickle.BINFLOAT + struct.pack(">d", value)
    if type(value) is str:
        return text(value, protocol)
    if type(value) is bytes:
        if protocol >= 3:
            return binbytes(value)
        return emit(Call(G("_codecs", "encode"), (value.decode("latin-1"), "latin1")), protocol)
    if type(value) is tuple:
        if protocol >= 2 and len(value) == 0:
            return pickle.EMPTY_TUPLE
        if protocol >= 2 and len(value) <= 3:
            return b"".join(emit(v, protocol) for v in value) + (pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(value) - 1]
        return pickle.MARK + b"".join(emit(v, protocol) for v in value) + pickle.TUPLE
    if type(value) is list:
        items = b"".join(emit(v, protocol) for v in value)
        if protocol == 0:
            return pickle.MARK + items + pickle.LIST
        return pickle.EMPTY_LIST + (pickle.MARK + items + pickle.APPENDS if value else b"")
    if type(value) is dict:
        items = b"".join(emit(k, protocol) + emit(v, protocol) for k, v in value.items())
        if protocol == 0:
            return pickle.MARK + items + pickle.DICT
        return pickle.EMPTY_DICT + (pickle.MARK + items + pickle.SETITEMS if value else b"")
    if isinstance(value, G):
        if protocol >= 4:
            return stack_global(value.module, value.name)
        module = _PY2_MODULES.get(value.module, value.module) if protocol < 3 else value.module
        return glob(module, value.name)
    if isinstance(value, Call):
        return _emit_call(value, protocol)
    raise TypeError(f"cannot emit {type(value).__name__}")


def _emit_call(call: Call, protocol: int) -> bytes:
    args = b"".join(emit(a, protocol) for a in call.args)
    if call.how == "inst":
        func = call.func
        return pickle.MARK + args + pickle.INST + f"{func.module}\n{func.name}\n".encode()
    if call.how == "obj":
        return pickle.MARK + emit(call.func, protocol) + args + pickle.OBJ
    if call.how == "newobj":
        return emit(call.func, protocol) + emit(tuple(call.args), protocol) + pickle.NEWOBJ
    if call.how == "newobj_ex":
        return emit(call.func, protocol) + emit(tuple(call.args), protocol) + emit(call.kwargs or {}, protocol) + pickle.NEWOBJ_EX
    return emit(call.func, protocol) + emit(tuple(call.args), protocol) + pickle.REDUCE


def program(value: Any, protocol: int) -> bytes:
    """A whole pickle: PROTO (protocol 2+), the value (in a FRAME at 4+), STOP."""
    body = emit(value, protocol)
    if protocol >= 4:
        return proto(protocol) + frame(body + pickle.STOP)
    return (proto(protocol) if protocol >= 2 else b"") + body + pickle.STOP


# -- torch values ----------------------------------------------------------------

REBUILD_V2 = G("torch._utils", "_rebuild_tensor_v2")
REBUILD_V3 = G("torch._utils", "_rebuild_tensor_v3")
ORDERED_DICT = G("collections", "OrderedDict")


def storage_pid(key: str, numel: int, storage: str = "FloatStorage", module: str = "torch", location: str = "cpu") -> Raw:
    """BINPERSID of ``('storage', torch.<storage>, key, location, numel)`` at protocol 2."""
    pid = emit(("storage", G(module, storage), key, location, numel), 2)
    return Raw(pid + pickle.BINPERSID)


def tensor_v2(storage: Raw, offset: int, size: tuple, stride: tuple, hooks: Any = None, metadata: Any = None) -> Call:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()[, metadata])``."""
    hooks = Call(ORDERED_DICT, ()) if hooks is None else hooks
    args: tuple = (storage, offset, size, stride, False, hooks)
    if metadata is not None:
        args += (metadata,)
    return Call(REBUILD_V2, args)


def state_dict(pairs: dict, metadata: dict | None = None) -> Raw:
    """An OrderedDict state dict, with torch's ``_metadata`` attribute set by BUILD."""
    items = b"".join(emit(k, 2) + emit(v, 2) for k, v in pairs.items())
    body = emit(Call(ORDERED_DICT, ()), 2) + (pickle.MARK + items + pickle.SETITEMS if pairs else b"")
    if metadata is not None:
        meta = emit(Call(ORDERED_DICT, ()), 2)
        meta_items = b"".join(emit(k, 2) + emit(v, 2) for k, v in metadata.items())
        meta += pickle.MARK + meta_items + pickle.SETITEMS if metadata else b""
        body += pickle.EMPTY_DICT + binunicode("_metadata") + meta + pickle.SETITEM + pickle.BUILD
    return Raw(body)


# -- zip archives ------------------------------------------------------------------

LOCAL_MAGIC = b"PK\x03\x04"
CENTRAL_MAGIC = b"PK\x01\x02"
DESCRIPTOR_MAGIC = b"PK\x07\x08"
END_MAGIC = b"PK\x05\x06"
ZIP64_END_MAGIC = b"PK\x06\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
FLAG_DESCRIPTOR = 0x8
FLAG_UTF8 = 0x800
STORED = 0
DEFLATED = 8
ALIGNMENT = 64  # torch's default storage alignment
LOCAL_SIZE = 30
_u32 = struct.Struct("<I")


@dataclass
class Member:
    """One zip record and the rules it breaks (all off by default).

    Attributes:
        name: the central-directory name.
        data: the uncompressed content.
        local_name: the local-header name, when it should differ from ``name``.
        flags: general-purpose flags of both headers (default as torch: 0x0808, 0x0800 if empty).
        crc: the CRC written (default: the real one; torch may write 0).
        method: STORED or DEFLATED (the data is then compressed with raw deflate).
        zip64: write 0xFFFFFFFF sizes and offset with a ZIP64 extra field.
        central_size, central_csize, central_offset: false values for the central entry.
        alias_of: write no local record; point the central entry at that member's local header.
        compressed: bytes to store instead of compressing ``data`` (for false deflate streams).
    """

    name: str
    data: bytes = b""
    local_name: str | None = None
    flags: int | None = None
    crc: int | None = None
    method: int = STORED
    zip64: bool = False
    central_size: int | None = None
    central_csize: int | None = None
    central_offset: int | None = None
    alias_of: str | None = None
    compressed: bytes | None = None
    descriptor: bool | None = None
    offset: int = field(default=-1, init=False)


def _payload(member: Member) -> bytes:
    if member.compressed is not None:
        return member.compressed
    if member.method == DEFLATED:
        squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return squeezer.compress(member.data) + squeezer.flush()
    return member.data


def _padding(cursor: int, name: bytes, extra_before: int) -> bytes:
    start = cursor + LOCAL_SIZE + len(name) + extra_before + 4
    pad = (-start) % ALIGNMENT
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


def _local_record(member: Member, cursor: int) -> bytes:
    payload = _payload(member)
    crc = zlib.crc32(member.data) if member.crc is None else member.crc
    name = (member.local_name if member.local_name is not None else member.name).encode("utf-8", "surrogateescape")
    descriptor = member.descriptor if member.descriptor is not None else bool(member.data)
    flags = member.flags if member.flags is not None else (FLAG_UTF8 | (FLAG_DESCRIPTOR if descriptor else 0))
    zip64 = b""
    if member.zip64:
        zip64 = struct.pack("<HHQQ", 1, 16, len(member.data), len(payload))
    extra = zip64 + _padding(cursor, name, len(zip64))
    if descriptor:
        head_crc, head_csize, head_size = 0, 0, 0
    elif member.zip64:
        head_crc, head_csize, head_size = crc, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        head_crc, head_csize, head_size = crc, len(payload), len(member.data)
    header = struct.pack(
        "<4sHHHHHIIIHH", LOCAL_MAGIC, 0, flags, member.method, 0, 0, head_crc, head_csize, head_size, len(name), len(extra)
    )
    tail = b""
    if descriptor:
        if member.zip64:
            tail = DESCRIPTOR_MAGIC + struct.pack("<IQQ", crc, len(payload), len(member.data))
        else:
            tail = DESCRIPTOR_MAGIC + struct.pack("<III", crc, len(payload), len(member.data))
    return header + name + extra + payload + tail


def _central_record(member: Member, source: Member) -> bytes:
    payload = _payload(source)
    crc = zlib.crc32(source.data) if member.crc is None else member.crc
    size = len(source.data) if member.central_size is None else member.central_size
    csize = len(payload) if member.central_csize is None else member.central_csize
    offset = source.offset if member.central_offset is None else member.central_offset
    name = member.name.encode("utf-8", "surrogateescape")
    descriptor = source.descriptor if source.descriptor is not None else bool(source.data)
    flags = member.flags if member.flags is not None else (FLAG_UTF8 | (FLAG_DESCRIPTOR if descriptor else 0))
    extra = b""
    if member.zip64:
        extra = struct.pack("<HHQQQ", 1, 24, size, csize, offset)
        size = csize = offset = 0xFFFFFFFF
    return (
        struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            CENTRAL_MAGIC, 0, 0, flags, source.method, 0, 0, crc, csize, size, len(name), len(extra), 0, 0, 0, 0, offset,
        )
        + name
        + extra
    )


def build_zip(
    members: list[Member],
    *,
    head: bytes = b"",
    count: int | None = None,
    zip64_end: bool = True,
    zip64_count: int | None = None,
    zip64_cd_size: int | None = None,
    zip64_cd_offset: int | None = None,
    locator_offset: int | None = None,
) -> bytes:
    """An archive of ``members`` laid out as torch writes it, with optional end-record lies."""
    out = bytearray(head)
    by_name = {}
    for member in members:
        if member.alias_of is not None:
            continue
        member.offset = len(out)
        out += _local_record(member, len(out))
        by_name[member.name] = member
    cd_offset = len(out)
    for member in members:
        source = by_name[member.alias_of] if member.alias_of is not None else member
        out += _central_record(member, source)
    cd_size = len(out) - cd_offset
    entries = len(members) if count is None else count
    if zip64_end:
        z64_at = len(out)
        out += struct.pack(
            "<4sQHHIIQQQQ", ZIP64_END_MAGIC, 44, 0x031E, 0x2D, 0, 0,
            entries if zip64_count is None else zip64_count,
            entries if zip64_count is None else zip64_count,
            cd_size if zip64_cd_size is None else zip64_cd_size,
            cd_offset if zip64_cd_offset is None else zip64_cd_offset,
        )
        out += struct.pack("<4sIQI", ZIP64_LOCATOR_MAGIC, 0, z64_at if locator_offset is None else locator_offset, 1)
    small = min(entries, 0xFFFF)
    out += struct.pack("<4sHHHHIIH", END_MAGIC, 0, 0, small, small, min(cd_size, 0xFFFFFFFF), min(cd_offset, 0xFFFFFFFF), 0)
    return bytes(out)


def torch_members(
    pickle_bytes: bytes,
    storages: dict[str, bytes] | None = None,
    *,
    prefix: str = "archive",
    version: bytes = b"3\n",
    byteorder: bytes | None = b"little",
) -> list[Member]:
    """The records of a minimal torch checkpoint, in torch's write order."""
    members = [Member(f"{prefix}/data.pkl", pickle_bytes)]
    if byteorder is not None:
        members.append(Member(f"{prefix}/byteorder", byteorder))
    for key, data in (storages or {}).items():
        members.append(Member(f"{prefix}/data/{key}", data))
    members.append(Member(f"{prefix}/version", version))
    return members


def torch_zip(pickle_bytes: bytes, storages: dict[str, bytes] | None = None, **options: Any) -> bytes:
    """A minimal torch zip checkpoint holding ``pickle_bytes`` as ``data.pkl`` and the storages."""
    return build_zip(torch_members(pickle_bytes, storages, **options))


# -- legacy checkpoints --------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_SYS_INFO = {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                   "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_pickles(obj_pickle: bytes, keys: list[str] | None = None, *, magic: bytes | None = None,
                   keys_pickle: bytes | None = None) -> list[bytes]:
    """The five pickles of a legacy ``torch.save`` stream; any one can be replaced by raw bytes."""
    return [
        program(LEGACY_MAGIC, 2) if magic is None else magic,
        program(LEGACY_PROTOCOL_VERSION, 2),
        program(LEGACY_SYS_INFO, 2),
        obj_pickle,
        program(list(keys or []), 2) if keys_pickle is None else keys_pickle,
    ]


def legacy_stream(obj_pickle: bytes, storages: dict[str, bytes] | None = None, *, itemsize: int = 4,
                  **replace: bytes) -> bytes:
    """A legacy stream: the five pickles, then ``int64 numel + data`` per sorted storage key."""
    storages = storages or {}
    keys = sorted(storages)
    parts = legacy_pickles(obj_pickle, keys, **replace)
    parts += [struct.pack("<q", len(storages[k]) // itemsize) + storages[k] for k in keys]
    return b"".join(parts)


def tar_archive(members: dict[str, bytes]) -> bytes:
    """A PAX tar of ``name -> bytes`` members (the layout of torch's ancient tar format)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
