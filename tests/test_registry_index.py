"""The sketch search stage: PQ fast scan + exact re-rank agrees with exact search; its cache file is keyed by the
entries, rebuilt when they change, and rebuilt (with a warning) when damaged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from hubguard.errors import RegistryError
from hubguard.registry.index import INDEX_FILE, SketchSearcher, exact_search

pytest.importorskip("faiss")

DIM = 512


def _sketches(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Registry-shaped float16 unit sketches (bases, derivatives at cosine 0.5-0.95, background) and queries."""
    rng = np.random.default_rng(seed)
    bases = rng.standard_normal((n // 10, DIM)).astype(np.float32)
    bases /= np.linalg.norm(bases, axis=1, keepdims=True)

    def derive(m: int) -> np.ndarray:
        c = rng.uniform(0.5, 0.95, m).astype(np.float32)[:, None]
        r = rng.standard_normal((m, DIM)).astype(np.float32)
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        x = c * bases[rng.integers(0, len(bases), m)] + np.sqrt(1 - c * c) * r
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    background = rng.standard_normal((n - len(bases) - n // 3, DIM)).astype(np.float32)
    background /= np.linalg.norm(background, axis=1, keepdims=True)
    mat = np.concatenate([bases, derive(n // 3), background])[rng.permutation(n)].astype(np.float16)
    return mat, derive(20)


def _names(n: int) -> list[str]:
    return [f"org/model-{i}" for i in range(n)]


def _pq(mat: np.ndarray, cache: Path | None, names: list[str] | None = None) -> SketchSearcher:
    s = SketchSearcher(mat, names=names or _names(len(mat)), cache_dir=cache, exact_limit=1000)
    assert s.kind == "pq-fastscan"
    return s


def test_index_returns_the_exact_top_k(tmp_path: Path) -> None:
    mat, queries = _sketches(6000)
    searcher = _pq(mat, tmp_path / "idx")
    for q in queries:
        for k in (1, 10, 50):
            want_rows, want_sims = exact_search(mat, q, k)
            rows, sims = searcher.search(q, k)
            assert set(rows.tolist()) == set(want_rows.tolist())
            np.testing.assert_allclose(sims, want_sims, atol=1e-5)
            assert np.all(np.diff(sims) <= 0)  # best first


def test_index_is_cached_and_reused(tmp_path: Path) -> None:
    mat, queries = _sketches(3000)
    first = _pq(mat, tmp_path / "idx")
    assert not first.loaded_from_cache and (tmp_path / "idx" / INDEX_FILE).is_file()
    again = _pq(mat, tmp_path / "idx")
    assert again.loaded_from_cache
    for q in queries[:5]:
        assert first.search(q, 10)[0].tolist() == again.search(q, 10)[0].tolist()


@pytest.mark.parametrize("change", ["add", "remove", "replace_sketch", "rename"])
def test_cache_is_invalidated_when_entries_change(tmp_path: Path, change: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    mat, queries = _sketches(3000)
    names = _names(len(mat))
    _pq(mat, tmp_path / "idx", names)
    if change == "add":
        mat, names = np.concatenate([mat, queries[:1].astype(np.float16)]), [*names, "org/new"]
    elif change == "remove":
        mat, names = np.delete(mat, 17, axis=0), names[:17] + names[18:]
    elif change == "replace_sketch":  # same names, one sketch replaced (registry add --replace)
        mat = mat.copy()
        mat[1234] = queries[0].astype(np.float16)
    else:
        names = [*names[:-1], "org/renamed"]
    with caplog.at_level(logging.INFO, logger="hubguard"):
        fresh = _pq(mat, tmp_path / "idx", names)
    assert not fresh.loaded_from_cache
    assert "entries changed" in caplog.text
    assert _pq(mat, tmp_path / "idx", names).loaded_from_cache  # the rebuilt index was cached
    q = queries[0]
    assert set(fresh.search(q, 10)[0].tolist()) == set(exact_search(mat, q, 10)[0].tolist())
    if change == "add":
        assert fresh.search(q, 1)[0][0] == len(mat) - 1  # the new entry is found


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        data[-1000] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "garbage":
        path.write_bytes(b"not an index at all")
    elif how == "bad_header":
        path.write_bytes(data[:8] + (5).to_bytes(4, "little") + b"{oops" + data[12:])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "flipped", "garbage", "bad_header", "empty"])
def test_damaged_cache_is_rebuilt(tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    mat, queries = _sketches(2000)
    _pq(mat, tmp_path / "idx")
    _damage(tmp_path / "idx" / INDEX_FILE, how)
    with caplog.at_level(logging.WARNING, logger="hubguard"):
        rebuilt = _pq(mat, tmp_path / "idx")
    assert not rebuilt.loaded_from_cache
    assert "unreadable" in caplog.text and INDEX_FILE in caplog.text
    assert _pq(mat, tmp_path / "idx").loaded_from_cache
    q = queries[0]
    assert set(rebuilt.search(q, 10)[0].tolist()) == set(exact_search(mat, q, 10)[0].tolist())


def test_missing_or_unwritable_cache_still_searches(tmp_path: Path) -> None:
    mat, queries = _sketches(2000)
    in_memory = _pq(mat, None)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    not_cached = _pq(mat, blocker / "idx")  # cannot be created: kept in memory
    for s in (in_memory, not_cached):
        assert set(s.search(queries[1], 5)[0].tolist()) == set(exact_search(mat, queries[1], 5)[0].tolist())


def test_empty_registry_and_k_larger_than_n(tmp_path: Path) -> None:
    empty = SketchSearcher(np.zeros((0, DIM), np.float16), names=[], cache_dir=tmp_path / "idx")
    rows, sims = empty.search(np.ones(DIM, np.float32) / np.sqrt(DIM), 10)
    assert rows.shape == (0,) and sims.shape == (0,)

    mat, queries = _sketches(2000)
    small = SketchSearcher(mat[:7], names=_names(7), cache_dir=tmp_path / "idx")
    rows, sims = small.search(queries[0], 50)
    assert sorted(rows.tolist()) == list(range(7)) and np.all(np.diff(sims) <= 0)

    pq = _pq(mat, tmp_path / "idx")
    rows, _ = pq.search(queries[0], 5000)
    assert sorted(rows.tolist()) == list(range(2000))
    assert pq.search(queries[0], 0)[0].shape == (0,)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    mat, queries = _sketches(2000)
    with pytest.raises(RegistryError, match="names for"):
        SketchSearcher(mat, names=_names(5), cache_dir=tmp_path / "idx")
    pq = _pq(mat, tmp_path / "idx")
    with pytest.raises(RegistryError, match="query sketch has 256 values"):
        pq.search(queries[0][:256], 10)
