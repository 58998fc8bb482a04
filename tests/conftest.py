"""Shared test setup: hypothesis profiles and access to the fixture generator.

The generator (``tests/fixtures/make_fixtures.py``) needs torch; tests that use it
get it through the ``make_fixtures`` fixture, which skips them when torch is absent.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

GENERATOR = Path(__file__).resolve().parent / "fixtures" / "make_fixtures.py"

# Property tests save and load a file per example; keep the suite to a few minutes.
settings.register_profile("default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


def import_generator() -> ModuleType:
    """The fixture generator as a module (imports torch)."""
    pytest.importorskip("torch")
    name = "make_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GENERATOR)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def make_fixtures() -> ModuleType:
    return import_generator()


@pytest.fixture(scope="session")
def scan_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The scanner corpus of tests/corpus.py, written once: (folder, samples)."""
    from corpus import write_corpus

    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``ptfile ARGS`` run in this process: ``run_cli(*args) -> (exit code, stdout, stderr)``.

    Usage errors and ``--help`` (argparse's SystemExit) give their exit code as the command would.
    """
    from ptfile.cli.main import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()  # only what this command prints
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
