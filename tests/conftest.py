"""Shared fixtures: where the real data lives, and a guard that keeps every test off the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MIRROR_ENV = "ZONEOUT_DATA_MIRROR"


def _shared_data_dir() -> Path:
    configured = os.environ.get(MIRROR_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets (ptb_char/, ptb_word/, mnist/, SHA256SUMS); skips the test if absent."""
    folder = _shared_data_dir()
    if not (folder / "SHA256SUMS").is_file():
        pytest.skip(f"real data not found at {folder} (no SHA256SUMS); set {MIRROR_ENV} to a copy of it")
    return folder


@pytest.fixture(scope="session")
def prepared_data_dir(shared_data, tmp_path_factory) -> Path:
    """A session-wide data dir with ptb_char, ptb_word and mnist copied from the mirror and verified."""
    from zoneout.data.download import prepare

    data_dir = tmp_path_factory.mktemp("data")
    for name in ("ptb_char", "ptb_word", "mnist"):
        prepare(name, data_dir, mirror=shared_data)
    return data_dir


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any download attempt in a test fails at once instead of reaching the network."""
    from urllib.error import URLError

    import zoneout.data.download as download

    def refuse(url, *args, **kwargs):
        raise URLError(f"network access is disabled in tests ({url})")

    monkeypatch.setattr(download, "urlopen", refuse)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, shared_data):
    """char-PTB prepared once per session in a folder of its own (end-to-end training tests)."""
    from zoneout.data import prepare

    folder = tmp_path_factory.mktemp("data")
    prepare("ptb_char", folder, mirror=shared_data)
    return folder
