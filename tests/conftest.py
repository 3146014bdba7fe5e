"""Shared test set-up: 4 logical CPU devices, the slow-test switch, shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Split the CPU into 4 logical devices before TensorFlow initialises, so tests can
# build cpu:2 / cpu:4 MirroredStrategies in the same process.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 4)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MULTI30K_MINI = SHARED / "data" / "multi30k-mini"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def multi30k_mini() -> Path:
    """The shared Multi30K subset; skips where ../shared is absent (a user's clone)."""
    if not MULTI30K_MINI.is_dir():
        pytest.skip(f"{MULTI30K_MINI} not found: the shared Multi30K subset is only beside "
                    "the project checkout in CI and on the developers' machines")
    return MULTI30K_MINI


@pytest.fixture(scope="session")
def tiny_model():
    """One tiny AlignModel for tests that only read it (do not train it)."""
    import malign

    return malign.AlignModel.from_preset("tiny")
