"""Shared fixtures: an installation per test, a store of each driver, and the rule that
under CI=true a missing server or tool fails the test instead of skipping it."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from asm import plugins  # noqa: E402
from asm.config import Config  # noqa: E402
from asm.store import open_store  # noqa: E402

CI = os.environ.get("CI") == "true"
DRIVERS = ["classic", "maildir"]


def require(tool: str, why: str = "") -> str:
    """Path of ``tool``; a missing tool fails under CI and skips elsewhere."""
    path = shutil.which(tool) or (tool if os.path.isabs(tool) and os.path.exists(tool) else None)
    if path is None:
        msg = f"{tool} is not installed{': ' + why if why else ''} (.ci/run installs it)"
        if CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def make_home(path, driver: str = "classic", **options) -> Config:
    """A fresh installation under ``path`` with the given driver."""
    os.makedirs(path, exist_ok=True)
    cfg = Config(home=str(path))
    cfg.set("store.driver", driver)
    for k, v in options.items():
        cfg.set(k, v)
    return cfg


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def ims_home(tmp_path, monkeypatch):
    home = tmp_path / "ims"
    monkeypatch.setenv("IMS_HOME", str(home))
    return home


@pytest.fixture(params=DRIVERS)
def driver(request):
    return request.param


@pytest.fixture
def config(ims_home, driver):
    return make_home(ims_home, driver)


@pytest.fixture
def store(config):
    return open_store(config)
