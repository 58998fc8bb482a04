"""Checkpoint surgery: rename, drop, keep and cast entries of a state dict.

Every rule applies to the keys of one mapping (the checkpoint itself, or the
sub-dict ``key`` names), in a fixed order: strip prefixes, prefix renames, regex
renames, then keep and drop patterns, then the dtype cast.  Renames are whole-prefix
or anchored-regex rewrites, never ``str.replace`` inside a name (which turns
``encoder.module.x`` into ``encoder.x`` by accident).  Two keys renamed onto one
name are an error, never a silent overwrite.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PtfileError
from .compare import strip_prefixes
from .convert import cast, select

__all__ = ["EditRules", "edit_mapping"]


@dataclass
class EditRules:
    strip: list[str] = field(default_factory=list)  # prefixes removed wherever they start a key
    rename: list[tuple[str, str]] = field(default_factory=list)  # (old prefix, new prefix)
    rename_regex: list[tuple[str, str]] = field(default_factory=list)  # (pattern, replacement), re.sub
    keep: list[str] = field(default_factory=list)  # regexes: keep only matching keys
    drop: list[str] = field(default_factory=list)  # regexes: drop matching keys
    dtype: str | None = None  # cast floating-point tensors


def _rename(key: str, rules: EditRules) -> str:
    key = strip_prefixes(key, rules.strip)
    for old, new in rules.rename:
        if key.startswith(old):
            key = new + key[len(old):]
    for pattern, replacement in rules.rename_regex:
        key = re.sub(pattern, replacement, key)
    return key


def _kept(key: str, keep: Iterable[str], drop: Iterable[str]) -> bool:
    keep, drop = list(keep), list(drop)
    if keep and not any(re.search(p, key) for p in keep):
        return False
    return not any(re.search(p, key) for p in drop)


def edit_mapping(mapping: Mapping, rules: EditRules,
                 progress: Callable[[int, int], None] | None = None) -> tuple[OrderedDict, list[str]]:
    """The edited mapping (same order) and a log of what changed, one line each.

    ``progress(bytes read, bytes to cast)`` follows the dtype cast.
    """
    result: OrderedDict = OrderedDict()
    log: list[str] = []
    origin: dict[str, str] = {}
    for key, value in mapping.items():
        new = _rename(str(key), rules) if isinstance(key, str) else key
        if not _kept(str(new), rules.keep, rules.drop):
            log.append(f"drop {key}")
            continue
        if new in result:
            raise PtfileError(f"{origin[new]!r} and {key!r} would both be renamed to {new!r}")
        if new != key:
            log.append(f"rename {key} -> {new}")
        origin[new] = key
        result[new] = value
    if rules.dtype:
        tensors = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
        for k, v in cast(tensors, rules.dtype, progress).items():
            if v.dtype != result[k].dtype:
                log.append(f"cast {k}: {result[k].dtype.name} -> {v.dtype.name}")
            result[k] = v
    if hasattr(mapping, "_metadata"):
        result._metadata = mapping._metadata  # type: ignore[attr-defined]  # torch's OrderedDict attribute, set as torch sets it
    return result, log


def apply(tree: Any, rules: EditRules, key: str | None,
          progress: Callable[[int, int], None] | None = None) -> tuple[Any, list[str]]:
    """Edit the mapping at ``key`` (or the top level); with a key, only that sub-dict is returned."""
    target = select(tree, key)
    if not isinstance(target, Mapping):
        raise PtfileError(f"{key or 'the checkpoint'} is a {type(target).__name__}, not a dict of entries")
    return edit_mapping(target, rules, progress)
