"""Many files at once: scanning and converting in parallel, on one machine or a Dask cluster.

``ptfile.scan`` and ``ptfile.tools.convert.convert`` are pure functions of their paths, so
fanning them out needs no coordination: a process pool on one machine, or a Dask
``distributed.Client`` for a cluster.  Results come back in the order of the inputs.
Dask is optional and imported only when a scheduler address is given.

Recipe for a cluster (``pip install 'ptfile[fleet]'`` on every node)::

    dask scheduler                                  # on one node
    dask worker tcp://scheduler:8786                # on every node that sees the files
    ptfile scan --scheduler tcp://scheduler:8786 -r /shared/models

or from Python: ``ptfile.tools.fleet.scan_many(paths, client=distributed.Client(address))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from ..constants import Limits
from ..errors import PtfileError
from ..policy.allowlist import Allow
from ..scanning.scanner import ScanResult, scan
from .convert import convert

__all__ = ["scan_many", "convert_many"]


def _scan_one(args: tuple[str, bool, tuple[str, ...], bool, Limits | None]) -> ScanResult:
    path, strict, allow, verify, limits = args
    return scan(path, strict=strict, allow=Allow(allow), verify=verify, limits=limits)


def _convert_one(args: tuple[str, str, dict]) -> list[str]:
    src, dst, options = args
    return convert(src, dst, **options).written


def _fan_out(function: Any, items: list, jobs: int | None, client: Any) -> list:
    if client is not None:
        futures = client.map(function, items, pure=False)
        return client.gather(futures)
    if jobs is None or jobs <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(function, items, chunksize=max(1, len(items) // (jobs * 8))))


def scan_many(paths: Sequence[str], *, strict: bool = False, jobs: int | None = None, client: Any = None,
              allow: Sequence[str] = (), verify: bool = False, limits: Limits | None = None) -> list[ScanResult]:
    """Scan every path, with ``jobs`` local processes or on the Dask cluster of ``client``.

    ``allow`` holds patterns (``module.name``, ``module.*``) as :func:`ptfile.scan` takes them;
    ``verify`` checks every storage record's CRC and ``limits`` are the limits, as :func:`ptfile.scan`
    takes them (sent to each worker: the limits in force here do not cross a process).
    """
    patterns = tuple(Allow(allow).patterns)  # checked here, before any worker starts; sent as plain strings
    return _fan_out(_scan_one, [(str(p), strict, patterns, verify, limits) for p in paths], jobs, client)


def convert_many(pairs: Sequence[tuple[str, str]], *, jobs: int | None = None, client: Any = None,
                 **options: Any) -> list[list[str]]:
    """Convert each ``(source, destination)`` pair; returns the files each conversion wrote."""
    return _fan_out(_convert_one, [(str(s), str(d), options) for s, d in pairs], jobs, client)


def connect(address: str) -> Any:
    """A Dask client for a scheduler address; Dask is imported only here."""
    try:
        from distributed import Client  # lazy: optional dependency (ptfile[fleet])
    except ImportError:
        raise PtfileError("--scheduler needs Dask (pip install 'ptfile[fleet]')") from None
    return Client(address)
