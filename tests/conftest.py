"""Session fixtures: a real tokenizer trained on CPython's docs, tiny models of every family, the real MiniLM."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never touch the user's hubguard data or caches: everything goes to a throwaway folder, set before
# hubguard.constants is imported.
_SANDBOX = Path(tempfile.mkdtemp(prefix="hubguard-tests-"))
os.environ["HUBGUARD_HOME"] = str(_SANDBOX / "home")
os.environ["HUBGUARD_CACHE"] = str(_SANDBOX / "cache")
os.environ["HUBGUARD_REMOTE_CACHE"] = str(_SANDBOX / "cache" / "remote")
os.environ.pop("HUBGUARD_REGISTRY", None)
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)

from tests.support.hubserver import HubServer, hub_server  # noqa: E402, F401  (the Hub-shaped test server fixture)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.factory import train_bpe_tokenizer

    return train_bpe_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def minilm() -> Path:
    from tests.support.factory import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Path, minilm: Path):
    """family -> {seed: folder} for seeds 0 and 1 (independent random inits of one config, with the LM head),
    each family built on first use (`tests.support.factory.FAMILIES`)."""
    from tests.support.factory import FamilyModels

    return FamilyModels(tmp_path_factory.mktemp("families"), bpe_tokenizer=bpe_tokenizer, minilm=minilm)
