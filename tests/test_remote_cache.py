"""The range cache's size cap: least-recently-used files go first, the total stays under the cap (real files, and a
real HubStore against the Hub-shaped server)."""
# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hubguard.weights import remote_cache
from hubguard.weights.remote_cache import CacheBudget, RangeCache
from tests.support.hubserver import hub_server  # noqa: F401 - pytest fixture


@pytest.fixture()
def capped(monkeypatch):
    def cap(n: int) -> None:
        remote_cache.set_max_bytes(n)

    yield cap
    remote_cache.set_max_bytes(None)


def _total(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.bin"))


def test_least_recently_used_entries_are_evicted_first(tmp_path, capped) -> None:
    capped(10_000)
    cache = RangeCache(root=tmp_path, repo_id="org/m", sha="a" * 40)
    for i in range(5):
        cache.store("model.safetensors", i * 2000, bytes([i]) * 2000)
        time.sleep(0.01)
    assert cache.lookup("model.safetensors", 0, 2000) == bytes([0]) * 2000  # entry 0 is now the most recently used
    time.sleep(0.01)
    cache.store("model.safetensors", 10_000, b"\x09" * 3000)  # over the cap: evict down to 90%
    assert _total(tmp_path) <= 9_000
    assert cache.lookup("model.safetensors", 0, 2000) == bytes([0]) * 2000  # kept: recently used
    assert cache.lookup("model.safetensors", 2000, 4000) is None  # the oldest unused went first
    assert cache.lookup("model.safetensors", 10_000, 13_000) == b"\x09" * 3000
    assert CacheBudget.of(tmp_path).evicted >= 2


def test_entries_larger_than_the_cap_are_not_cached(tmp_path, capped) -> None:
    capped(1000)
    cache = RangeCache(root=tmp_path, repo_id="org/m", sha="b" * 40)
    cache.store("f", 0, b"x" * 5000)
    assert cache.lookup("f", 0, 5000) is None and _total(tmp_path) == 0


def test_other_processes_files_count_toward_the_cap(tmp_path, capped) -> None:
    capped(8000)
    other = tmp_path / "v1" / "org--x" / ("c" * 40) / "f"
    other.mkdir(parents=True)
    (other / "0-6000.bin").write_bytes(b"o" * 6000)  # written by someone else, long ago
    os.utime(other / "0-6000.bin", (1, 1))
    CacheBudget._budgets.pop(tmp_path.absolute(), None)
    cache = RangeCache(root=tmp_path, repo_id="org/m", sha="d" * 40)
    cache.store("f", 0, b"n" * 4000)
    assert not (other / "0-6000.bin").exists() and _total(tmp_path) == 4000


def test_a_capped_cache_over_many_commits_stays_under_its_cap(hub_server, family_models, tmp_path, capped) -> None:
    from hubguard.lineage.fingerprints import compute_fingerprint

    root = Path(os.environ["HUBGUARD_REMOTE_CACHE"])
    capped(1_500_000)
    for i, family in enumerate(("llama", "qwen2", "mistral", "gemma")):
        sha = hub_server.add_repo(f"org/m{i}", family_models[family][0])
        compute_fingerprint(f"hf://org/m{i}@{sha}")
        assert _total(root) <= 1_500_000
    assert CacheBudget.of(root).evicted > 0
