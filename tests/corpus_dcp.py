"""Corpus samples for DCP's per-rank metadata and its safetensors shards.

A save without coordination leaves ``__{rank}.metadata`` files; each rank's loader unpickles
its own (rank 0's in a single process), so a payload in any of them runs for some reader.
``HuggingFaceStorageReader`` merges every ``*.safetensors`` file of a folder by the
``DCP_SHARDING_INFO`` of its header; shards that claim the same place, or leave part of a
tensor to nobody, have no single reading.  Metadata and items come from the torch-written
``dcp/single`` fixture; safetensors shards are built from bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from builders import program
from corpus import DANGEROUS, FIXTURES, INVALID, MALFORMED, MALICIOUS, Sample, os_system

SINGLE = FIXTURES / "dcp" / "single"
SHARDING_INFO_KEY = "DCP_SHARDING_INFO"


def _single_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SINGLE.iterdir()) if p.is_file()}


def _per_rank(metadata: dict[str, bytes]) -> dict[str, bytes]:
    """The fixture's items with the given metadata files in place of its ``.metadata``."""
    files = _single_files()
    del files[".metadata"]
    return {**files, **metadata}


def _safetensors(name: str, values: np.ndarray, offsets: list[int]) -> bytes:
    """A safetensors file of one float32 tensor ``name`` placed at ``offsets`` by DCP_SHARDING_INFO."""
    data = values.astype("<f4").tobytes()
    header = {"__metadata__": {SHARDING_INFO_KEY: json.dumps({name: {"saved_offsets": offsets}}),
                               "DCP_VERSION": "1.0", "format": "pt"},
              name: {"dtype": "F32", "shape": list(values.shape), "data_offsets": [0, len(data)]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _shards(*offsets: int) -> dict[str, bytes]:
    return {f"shard-{i + 1:05d}-model-00001-of-00001.safetensors": _safetensors("w", np.arange(4.0), [offset])
            for i, offset in enumerate(offsets)}


def samples(marker: Path) -> list[Sample]:
    metadata = _single_files()[".metadata"]
    payload = program(os_system(marker), 2)
    return [
        Sample("DCP-rank1-metadata-payload", "A1", MALICIOUS, (DANGEROUS,),
               "per-rank DCP metadata: rank 0's is the fixture's, rank 1's pickle calls os.system "
               "(rank 1's FileSystemReader unpickles it)",
               _per_rank({"__0.metadata": metadata, "__1.metadata": payload})),
        Sample("DCP-rank0-metadata-payload", "A1", MALICIOUS, (DANGEROUS,),
               "per-rank DCP metadata whose __0.metadata (what a single process reads) calls os.system",
               _per_rank({"__0.metadata": payload, "__1.metadata": metadata})),
        Sample("DCP-rank-metadata-without-rank0", "B10", MALFORMED, (INVALID,),
               "per-rank DCP metadata without __0.metadata: a single process cannot read it",
               _per_rank({"__1.metadata": metadata})),
        Sample("DCP-safetensors-overlap", "D2", MALFORMED, (INVALID,),
               "two DCP safetensors shards both placing w at offset 0: which one is read depends on listing order",
               _shards(0, 0)),
        Sample("DCP-safetensors-hole", "D2", MALFORMED, (INVALID,),
               "DCP safetensors shards at offsets 0 and 6 of a 10-element tensor: elements 4 and 5 are never stored",
               _shards(0, 6)),
    ]
