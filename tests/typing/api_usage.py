"""The README's use of ptfile, as a user writes it.

tests/test_typing.py checks this file with ``mypy --strict`` (every type below must be what
ptfile declares) and runs it on real files (every declared type must be what ptfile returns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import assert_type

import ptfile


def write(folder: Path) -> tuple[Path, list[str]]:
    """A checkpoint and a shard folder, written with ``save`` and ``save_sharded``."""
    state = {"encoder.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "embed.weight": np.ones((8, 2))}
    path = folder / "model.pt"
    ptfile.save({**state, "epoch": 3}, path, progress=lambda done, total: None)
    names = ptfile.save_sharded(state, folder / "shards", max_shard_size=100)
    assert_type(names, list[str])
    return path, names


def read(path: Path) -> dict[str, Any]:
    """``load``, ``open`` as a context manager and every reading of the handle."""
    state = ptfile.load(path)
    copied = ptfile.load(path, mmap=False, records=True, allow=["mypkg.*"])
    with ptfile.open(path) as ckpt:
        assert_type(ckpt, ptfile.Handle)
        keys = ckpt.keys()
        assert_type(keys, list[str])
        infos: dict[str, ptfile.TensorInfo] = {key: ckpt.info(key) for key in ckpt.keys()}
        shapes: dict[str, tuple[int, ...]] = {key: info.shape for key, info in infos.items()}
        dtypes: dict[str, str] = {key: info.dtype for key, info in infos.items()}
        weight = ckpt["encoder.weight"]
        items = dict(ckpt.items())
        rows = ckpt.get_slice("embed.weight")[:2]
        slice_shape: list[int] = ckpt.get_slice("embed.weight").get_shape()
        metadata: dict[str, str] = ckpt.metadata()
        epoch = ckpt.value("epoch")
        fmt: str = ckpt.format
        count: int = len(ckpt)
        found: bool = "encoder.weight" in ckpt
    return {"state": state, "copied": copied, "keys": keys, "shapes": shapes, "dtypes": dtypes, "weight": weight,
            "items": items, "rows": rows, "slice_shape": slice_shape, "metadata": metadata, "epoch": epoch,
            "format": fmt, "count": count, "found": found}


def scan(path: Path) -> dict[str, Any]:
    """``scan`` and the fields of its result."""
    report = ptfile.scan(path, strict=False, allow=None, verify=True)
    assert_type(report, ptfile.ScanResult)
    verdict: str = report.verdict
    clean: bool = report.clean
    globals_named: list[str] = [use.path for use in report.globals]
    findings: list[tuple[str, str, int]] = [(f.path, f.severity, f.calls) for f in report.findings]
    faults: list[str] = report.faults
    notes: list[str] = report.notes
    as_json: dict[str, Any] = report.to_dict()
    return {"verdict": verdict, "clean": clean, "globals": globals_named, "findings": findings, "faults": faults,
            "notes": notes, "json": as_json}


def refused(data: bytes) -> tuple[str, list[str]] | None:
    """What an unsafe file raises: a :class:`ptfile.UnsafeGlobalError` holding its findings."""
    try:
        ptfile.load(data)
    except ptfile.UnsafeGlobalError as exc:
        return str(exc), [type(finding).__name__ for finding in exc.findings]
    except ptfile.PtfileError:
        raise
    return None


def safe_open(folder: Path) -> dict[str, Any]:
    """safetensors' calling convention over a shard folder."""
    with ptfile.safe_open(folder, framework="numpy") as f:
        assert_type(f, ptfile.Handle)
        return {key: f.get_tensor(key) for key in f.keys()}


def torch_round_trip(path: Path, copy: Path) -> Any:
    """``ptfile.torch``: torch.load's and torch.save's signatures."""
    import ptfile.torch

    state = ptfile.torch.load(path, map_location="cpu", weights_only=True, mmap=None)
    ptfile.torch.save(state, copy)
    return ptfile.torch.load(str(copy), None)
