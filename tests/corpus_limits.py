"""Hostile samples against ptfile's resource limits and memory safety, for the scanner corpus.

Each one is small (at most about a megabyte) and aimed at one limit: archive readers that
raise their own errors on damaged bytes, a gzip bomb holding a pickle, keys that all share
one hash value, a stream of many tiny pickles, and numpy dtype states whose flags make numpy
read array bytes as object pointers.  None of them is clean: each must end in a refusal
(``load``) or an ``invalid`` verdict (``scan``), quickly and in bounded memory.
``benchmarks/hostile_limits.py`` times ``load`` and ``scan`` on each.
"""

from __future__ import annotations

import gzip
import io
import lzma
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

from builders import proto
from corpus import INVALID, MALFORMED, Sample, _tensor_state, in_zip, program

#: Distinct int keys sharing one hash value in each collision sample: 0.8 MB of pickle.
COLLIDING_KEYS = 60_000
#: Bytes the gzip bomb's pickle declares (and inflates to): 512 MiB from about half a megabyte.
BOMB_BYTES = 512 << 20
#: Back-to-back pickles in the stream sample (``N.`` each, two bytes): a megabyte.
STREAM_PICKLES = 500_000

#: Single-byte damage to a 7z archive of a checkpoint (offset from the end, new byte) and what
#: py7zr raises when it lists or extracts the result; none of them is a py7zr error class.
SEVEN_ZIP_DAMAGE = {
    "LZMAError": (-104, 2),
    "TypeError": (-101, 0),
    "AttributeError": (-99, 0),
    "AssertionError": (-70, 24),
    "OverflowError": (-33, 36),
    "UnicodeDecodeError": (-61, 216),
}


def checkpoint() -> bytes:
    """A small benign torch zip checkpoint: the content the damaged archives hold."""
    tree, storages = _tensor_state()
    return in_zip(program(tree, 2), storages)


def corrupt_xz() -> bytes:
    """An xz stream of the checkpoint with its compressed bytes overwritten halfway: LZMAError."""
    data = bytearray(lzma.compress(checkpoint()))
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xff" * 16
    return bytes(data)


def seven_zip(content: bytes) -> bytes | None:
    """The checkpoint stored (not compressed) in a 7z archive; None without py7zr."""
    try:
        import py7zr
    except ImportError:
        return None
    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w", filters=[{"id": py7zr.FILTER_COPY}]) as archive:
        archive.writestr(content, "model.pt")
    return out.getvalue()


def damaged_seven_zips() -> dict[str, bytes]:
    """One damaged 7z archive per exception of :data:`SEVEN_ZIP_DAMAGE`, keyed by that exception's name."""
    archive = seven_zip(checkpoint())
    if archive is None:
        return {}
    out = {}
    for error, (offset, value) in SEVEN_ZIP_DAMAGE.items():
        damaged = bytearray(archive)
        damaged[len(damaged) + offset] = value
        out[error] = bytes(damaged)
    return out


def gzip_bomb(size: int = BOMB_BYTES) -> bytes:
    """A gzip file whose content is one pickle of ``size`` zero bytes (BINBYTES8).

    gzip members may follow each other and read as one stream, so the bomb is one compressed
    MiB of zeros repeated: small to build, and about 1000:1 like a single deflate stream.
    """
    piece = 1 << 20
    zeros = gzip.compress(bytes(piece), compresslevel=9, mtime=0)
    head = gzip.compress(proto(4) + pickle.BINBYTES8 + struct.pack("<Q", size), mtime=0)
    tail = gzip.compress(pickle.STOP, mtime=0)
    return head + zeros * (size // piece) + gzip.compress(bytes(size % piece), mtime=0) + tail


def colliding_ints(count: int = COLLIDING_KEYS) -> list[int]:
    """``count`` distinct ints with one hash value: they differ by multiples of the hash modulus."""
    modulus = sys.hash_info.modulus
    return [7 + k * modulus for k in range(count)]


def _long1(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def _batched(items: list[bytes], close: bytes, batch: int = 1000) -> bytes:
    """MARK ... ``close`` around every ``batch`` items, as pickle's own batching does."""
    return b"".join(pickle.MARK + b"".join(items[i : i + batch]) + close for i in range(0, len(items), batch))


def colliding_dict(count: int = COLLIDING_KEYS) -> bytes:
    keys = [_long1(k) + pickle.NONE for k in colliding_ints(count)]
    return proto(2) + pickle.EMPTY_DICT + _batched(keys, pickle.SETITEMS) + pickle.STOP


def colliding_frozenset(count: int = COLLIDING_KEYS) -> bytes:
    keys = b"".join(_long1(k) for k in colliding_ints(count))
    return proto(4) + pickle.MARK + keys + pickle.FROZENSET + pickle.STOP


def colliding_set(count: int = COLLIDING_KEYS) -> bytes:
    keys = [_long1(k) for k in colliding_ints(count)]
    return proto(4) + pickle.EMPTY_SET + _batched(keys, pickle.ADDITEMS) + pickle.STOP


def pickle_stream(count: int = STREAM_PICKLES) -> bytes:
    """``count`` one-opcode pickles back to back (``N.``)."""
    return (pickle.NONE + pickle.STOP) * count


#: The end of the state numpy pickles for an int64 dtype: alignment -1 (BININT), flags 0 (BININT1), TUPLE.
_INT64_FLAGS = b"J\xff\xff\xff\xffK\x00t"


def numpy_with_flags(flags: int) -> bytes:
    """numpy's own pickle of a small int64 array whose dtype state carries ``flags`` instead of 0."""
    raw = pickle.dumps(np.arange(4, dtype="<i8"), 2)
    assert raw.count(_INT64_FLAGS) == 1, "numpy's dtype state is not where the sample expects it"
    return raw.replace(_INT64_FLAGS, _INT64_FLAGS[:-2] + bytes([flags]) + b"t")


def samples(marker: Path) -> list[Sample]:
    """The resource and memory-safety samples; none has a payload, so ``marker`` is unused."""
    out = [
        Sample("L1-xz-corrupt.xz", "C1", MALFORMED, (INVALID,), "an xz stream damaged halfway (LZMAError)",
               corrupt_xz()),
    ]
    for error, data in damaged_seven_zips().items():
        out.append(Sample(f"L1-7z-{error}.7z", "C1", MALFORMED, (INVALID,),
                          f"a 7z archive damaged so that py7zr raises {error}", data))
    out += [
        Sample("L2-gzip-bomb-pickle.gz", "C10", MALFORMED, (INVALID,),
               f"half a megabyte of gzip inflating to a pickle of {BOMB_BYTES >> 20} MiB", gzip_bomb()),
        Sample("L3-hash-collision-dict.pkl", "E5", MALFORMED, (INVALID,),
               f"{COLLIDING_KEYS} int keys of one hash value set into a dict", colliding_dict()),
        Sample("L3-hash-collision-frozenset.pkl", "E5", MALFORMED, (INVALID,),
               f"{COLLIDING_KEYS} int keys of one hash value in a FROZENSET", colliding_frozenset()),
        Sample("L3-hash-collision-set.pkl", "E5", MALFORMED, (INVALID,),
               f"{COLLIDING_KEYS} int keys of one hash value added to a set", colliding_set()),
        Sample("L4-pickle-stream.pkl", "B5", MALFORMED, (INVALID,),
               f"{STREAM_PICKLES} tiny pickles back to back", pickle_stream()),
        Sample("L5-numpy-int64-refcount-flag.pkl", "D2", MALFORMED, (INVALID,),
               "an int64 numpy dtype whose flags claim object pointers (NPY_ITEM_REFCOUNT)", numpy_with_flags(0x01)),
        Sample("L5-numpy-int64-all-flags.pkl", "D2", MALFORMED, (INVALID,),
               "an int64 numpy dtype with every flag numpy's object dtype sets", numpy_with_flags(0x3F)),
    ]
    return out


__all__ = ["samples", "checkpoint", "corrupt_xz", "damaged_seven_zips", "gzip_bomb", "colliding_ints",
           "colliding_dict", "colliding_frozenset", "colliding_set", "pickle_stream", "numpy_with_flags",
           "SEVEN_ZIP_DAMAGE", "COLLIDING_KEYS"]
