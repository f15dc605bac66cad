"""Shared fixtures: small real data, a quickly trained tiny checkpoint, and its exported bundle.

Expensive fixtures are session-scoped and built once in a session-wide temporary folder. Torch-side
fixtures import torch lazily so torch-free test modules can still use the data-free ones.

Hypothesis profiles (``HYPOTHESIS_PROFILE``; default ``ci``, whether or not ``CI`` is set, so the README's
test command and ``.ci/run`` are the same run):

* ``ci``: derandomized (the examples are a fixed function of each test, so a CI failure replays exactly
  on any machine), no example database, 200 examples, the failing example's blob printed;
* ``dev``: random (a new seed each run, printed with the blob on a failure; ``--hypothesis-seed=N``
  replays it), 1000 examples, failures saved in ``.hypothesis/`` and replayed first on the next run.

``HYPOTHESIS_MAX_EXAMPLES`` overrides the profile's example count. Tests scale their own counts from it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _hypothesis_profiles() -> None:
    try:
        from hypothesis import settings
    except ImportError:  # the torch-free environment may lack it; its tests do not use it
        return
    settings.register_profile("ci", max_examples=200, derandomize=True, database=None, print_blob=True,
                              deadline=None)
    settings.register_profile("dev", max_examples=1000, derandomize=False, print_blob=True, deadline=None)
    name = os.environ.get("HYPOTHESIS_PROFILE") or "ci"
    if os.environ.get("HYPOTHESIS_MAX_EXAMPLES"):
        settings.register_profile(f"{name}-n", settings.get_profile(name),
                                  max_examples=int(os.environ["HYPOTHESIS_MAX_EXAMPLES"]))
        name = f"{name}-n"
    settings.load_profile(name)


_hypothesis_profiles()
SHARED_FMNIST = REPO.parent / "shared" / "data" / "fashion-mnist"


def fmnist_path() -> Path | None:
    for cand in (os.environ.get("SDEDGE_DATA"), str(SHARED_FMNIST), str(REPO / ".data" / "fashion-mnist"),
                 "/usr/share/datasets/fashion-mnist"):
        if cand and (Path(cand) / "train-images-idx3-ubyte.gz").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The real Fashion-MNIST folder; tests that need it skip where it is absent."""
    p = fmnist_path()
    if p is None:
        pytest.skip("real Fashion-MNIST not found (../shared/data/fashion-mnist or SDEDGE_DATA)")
    return p


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digits_splits():
    from sdedge.data import load_splits

    return load_splits("digits")


def _fixture_bundle_module():
    """``native/tests/make_fixture_bundle.py``: the one place that says how the tiny model is trained."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixture_bundle",
                                                  REPO / "native" / "tests" / "make_fixture_bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny 3-exit model trained for a few epochs on the built-in digits (BYOT)."""
    from sdedge.train import TrainConfig, train

    cfg = TrainConfig(epochs=4, output=str(tmp_path_factory.mktemp("tiny_run")), **_fixture_bundle_module().TINY)
    return Path(train(cfg).best_checkpoint)


@pytest.fixture(scope="session")
def tiny_bundle(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to a verified bundle (FP32 sections + full.onnx).

    ``SDEDGE_TEST_TINY_BUNDLE`` names the same bundle built once by ``native/tests/make_fixture_bundle.py``
    (the mutation run, ``benchmarks/mutation.py``, sets it so each mutant's tests skip the training): it is
    copied, never used in place, and verified like any other bundle by the tests that open it.
    """
    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    prebuilt = os.environ.get("SDEDGE_TEST_TINY_BUNDLE")
    if prebuilt:
        import shutil

        shutil.copytree(prebuilt, out)
        return out
    from sdedge.export import ExportConfig, export_bundle

    checkpoint = request.getfixturevalue("tiny_checkpoint")
    return Path(export_bundle(ExportConfig(checkpoint=str(checkpoint), output=str(out))).bundle_path)


@pytest.fixture(scope="session")
def load_fault():
    """``benchmarks/load_fault.py`` as a module (its ``ServerProcess`` runs ``sdedge serve --port 0``)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("load_fault", REPO / "benchmarks" / "load_fault.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_fault"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ENGINES = ("native", "python")


def require_engine(name: str) -> str:
    """Skip a native-parametrized test where the native core is not built (the fallback runs alone then)."""
    if name == "native":
        from sdedge.runtime.native_engine import unavailable_reason

        why = unavailable_reason()
        if why:
            pytest.skip(f"native core not available: {why}")
    return name


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each ``AnytimeSession`` engine: the native core (skipped where not built) and the Python fallback."""
    return require_engine(request.param)
