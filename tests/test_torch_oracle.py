"""ptfile against torch itself: every fixture case, saved afresh, read by both.

Each case of ``make_fixtures.py`` is saved by torch into a temporary directory,
read back with ``torch.load(weights_only=True)`` (the training checkpoint, which
holds numpy values and ``argparse.Namespace``, needs ``weights_only=False``), and
the result described exactly; ptfile must return the same dtypes, shapes, strides,
storage offsets, bytes and memory sharing, through ``load`` and ``open``.  The
committed golden files must also still be what this torch writes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import ptfile  # noqa: E402
from conftest import import_generator  # noqa: E402
from goldencheck import Expected, check_lazy, check_loaded, load_expected  # noqa: E402

generator = import_generator()
CASES = {case.name: case for case in generator.CASES}


def _fresh(name: str, directory) -> Expected:
    case = CASES[name]
    path = generator.save_case(case, directory)
    meta, blobs = generator.expected_for(case, path)
    return Expected(name, meta, blobs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ptfile_reads_what_torch_reads(name: str, tmp_path) -> None:
    expected = _fresh(name, tmp_path)
    for mmap in (True, False):
        check_loaded(ptfile.load(expected.path, mmap=mmap), expected, writable=not mmap)
        with ptfile.open(expected.path, mmap=mmap) as ckpt:
            check_lazy(ckpt, expected, writable=not mmap)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_fixtures_are_current(name: str, tmp_path) -> None:
    """torch 2.13 still writes the committed bytes and reads the committed description."""
    fresh, golden = _fresh(name, tmp_path), load_expected(name)
    assert fresh.path.read_bytes() == golden.path.read_bytes(), "rerun tests/fixtures/make_fixtures.py"
    assert fresh.meta["tensors"] == golden.meta["tensors"] and fresh.blobs == golden.blobs
    assert fresh.meta["tree"] == golden.meta["tree"]


def test_weights_only_cases_load_with_weights_only() -> None:
    """Only the training checkpoint needs torch's unrestricted unpickler."""
    assert [name for name, case in CASES.items() if not case.weights_only] == ["training"]
