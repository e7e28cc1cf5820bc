"""The search stage over sketches: exact (vectorised numpy) for small registries, an IVF index above.

Sketches are unit vectors, so similarity is a dot product. Below `EXACT_LIMIT` entries the whole [n, d]
matrix is scanned in float32 (one BLAS call). Above it, a spherical k-means inverted file (IVF): √n
centroids trained on a sample, every sketch stored in its centroid's contiguous list (float16), and a query
scans only the `nprobe` lists whose centroids are closest. The index is a few small numpy arrays
(centroids, order, list offsets) cached next to the registry and rebuilt when the entries change;
nothing is pickled.

Status: the exact stage meets its targets; this IVF stage does NOT yet (benchmarks/registry.py at 10⁵
synthetic entries: recall@10 0.74, p50 34 ms). HNSW (usearch) at 512 dimensions built at a few hundred
vectors per second on the shared 2 cores in a quick trial, so it was not wired in.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubguard.utils import get_logger

if TYPE_CHECKING:
    import numpy as np

logger = get_logger(__name__)

EXACT_LIMIT = 100_000
INDEX_VERSION = 1
_CHUNK = 65_536


def _topk(sims: "np.ndarray", k: int) -> "np.ndarray":
    import numpy as np

    k = min(k, sims.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-sims, k - 1)[:k]
    return part[np.argsort(-sims[part], kind="stable")]


def exact_search(matrix: "np.ndarray", query: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]:
    """(rows, similarities) of the k best rows of `matrix` for `query`, scanning in float32 chunks."""
    import numpy as np

    q = np.asarray(query, dtype=np.float32)
    if matrix.dtype == np.float32:
        sims = matrix @ q
    else:
        sims = np.empty(matrix.shape[0], dtype=np.float32)
        for s in range(0, matrix.shape[0], _CHUNK):
            sims[s : s + _CHUNK] = matrix[s : s + _CHUNK].astype(np.float32) @ q
    rows = _topk(sims, k)
    return rows, sims[rows]


def _assign(matrix: "np.ndarray", centroids: "np.ndarray") -> "np.ndarray":
    import numpy as np

    out = np.empty(matrix.shape[0], dtype=np.int32)
    ct = centroids.T.astype(np.float32)
    for s in range(0, matrix.shape[0], _CHUNK):
        out[s : s + _CHUNK] = np.argmax(matrix[s : s + _CHUNK].astype(np.float32) @ ct, axis=1)
    return out


def train_centroids(matrix: "np.ndarray", *, n_lists: int, iterations: int = 8, seed: int = 0) -> "np.ndarray":
    """Spherical k-means on a sample of the rows: [n_lists, d] unit float32 centroids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = matrix.shape[0]
    sample = matrix[np.sort(rng.choice(n, size=min(n, 32 * n_lists), replace=False))].astype(np.float32)
    cent = sample[rng.choice(sample.shape[0], size=n_lists, replace=False)].copy()
    for _ in range(iterations):
        assign = np.argmax(sample @ cent.T, axis=1)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, sample)
        counts = np.bincount(assign, minlength=n_lists)
        empty = counts == 0
        if empty.any():  # re-seed empty lists with random sample rows
            sums[empty] = sample[rng.choice(sample.shape[0], size=int(empty.sum()), replace=False)]
        cent = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)
    return cent.astype(np.float32)


@dataclass
class IVFIndex:
    """Inverted file over unit sketches. `vectors` holds the sketches grouped by list (rows `order`)."""

    centroids: "np.ndarray"  # [L, d] float32
    order: "np.ndarray"  # [n] int64: registry row of each stored vector
    offsets: "np.ndarray"  # [L + 1] int64: list l is vectors[offsets[l]:offsets[l+1]]
    vectors: "np.ndarray"  # [n, d] float16
    nprobe: int

    @classmethod
    def build(cls, matrix: "np.ndarray", *, n_lists: int | None = None, nprobe: int | None = None,
              centroids: "np.ndarray | None" = None) -> "IVFIndex":
        import numpy as np

        n = matrix.shape[0]
        if centroids is None:
            n_lists = n_lists or max(16, int(math.sqrt(n)))
            centroids = train_centroids(matrix, n_lists=n_lists)
        assign = _assign(matrix, centroids)
        order = np.argsort(assign, kind="stable").astype(np.int64)
        counts = np.bincount(assign, minlength=centroids.shape[0])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n_lists = centroids.shape[0]
        return cls(centroids=centroids, order=order, offsets=offsets, vectors=matrix[order].astype(np.float16),
                   nprobe=nprobe or max(8, n_lists // 24))

    def search(self, query: "np.ndarray", k: int, *, nprobe: int | None = None) -> tuple["np.ndarray", "np.ndarray"]:
        import numpy as np

        q = np.asarray(query, dtype=np.float32)
        probe = min(nprobe or self.nprobe, self.centroids.shape[0])
        lists = _topk(self.centroids @ q, probe)
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in lists]
        idx = np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, np.int64)
        cand = self.vectors[idx].astype(np.float32)
        sims = cand @ q
        best = _topk(sims, k)
        return self.order[idx[best]], sims[best]

    # -- cache on disk (plain .npy arrays; np.load with allow_pickle=False) ---------------------------------

    def save(self, folder: Path, *, key: str) -> None:
        import numpy as np

        folder.mkdir(parents=True, exist_ok=True)
        for name in ("centroids", "order", "offsets"):
            tmp = folder / f".{name}.tmp.npy"
            np.save(tmp, getattr(self, name), allow_pickle=False)
            tmp.replace(folder / f"{name}.npy")
        (folder / "key.txt").write_text(f"{INDEX_VERSION}:{key}:{self.nprobe}\n")

    @classmethod
    def load(cls, folder: Path, *, key: str, matrix: "np.ndarray") -> "IVFIndex | None":
        """The cached index for `key`, or None when absent, stale or unreadable (then it is rebuilt)."""
        import numpy as np

        try:
            version, stored_key, nprobe = (folder / "key.txt").read_text().strip().split(":")
            if int(version) != INDEX_VERSION or stored_key != key:
                return None
            arrays = {n: np.load(folder / f"{n}.npy", allow_pickle=False) for n in ("centroids", "order", "offsets")}
        except (OSError, ValueError):
            return None
        order = arrays["order"]
        if order.shape != (matrix.shape[0],) or arrays["offsets"][-1] != matrix.shape[0]:
            return None
        return cls(centroids=arrays["centroids"], order=order, offsets=arrays["offsets"],
                   vectors=matrix[order].astype("float16"), nprobe=int(nprobe))

    @staticmethod
    def load_centroids(folder: Path, *, dim: int) -> "np.ndarray | None":
        import numpy as np

        try:
            cent = np.load(folder / "centroids.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        return cent if cent.ndim == 2 and cent.shape[1] == dim else None


def matrix_key(names: list[str], matrix: "np.ndarray") -> str:
    """A digest identifying a sketch matrix (names and a sample of values) for index caching."""
    h = hashlib.sha256()
    h.update(str(matrix.shape).encode())
    h.update("\0".join(names).encode())
    h.update(matrix[:: max(1, matrix.shape[0] // 1024)].tobytes())
    return h.hexdigest()[:32]


class SketchSearcher:
    """Exact below `exact_limit` entries, IVF above; the IVF is cached in `cache_dir` when given."""

    def __init__(self, matrix: "np.ndarray", *, names: list[str], cache_dir: Path | None = None,
                 exact_limit: int = EXACT_LIMIT) -> None:
        import numpy as np

        self.n = matrix.shape[0]
        self.ivf: IVFIndex | None = None
        self.exact: np.ndarray | None = None
        if self.n < exact_limit:
            self.exact = matrix.astype(np.float32)
            return
        key = matrix_key(names, matrix)
        if cache_dir is not None:
            self.ivf = IVFIndex.load(cache_dir, key=key, matrix=matrix)
        if self.ivf is None:
            centroids = IVFIndex.load_centroids(cache_dir, dim=matrix.shape[1]) if cache_dir is not None else None
            if centroids is not None and centroids.shape[0] < max(16, int(math.sqrt(self.n)) // 2):
                centroids = None  # the registry grew a lot: retrain
            logger.info("building the sketch index over %d entries", self.n)
            self.ivf = IVFIndex.build(matrix, centroids=centroids)
            if cache_dir is not None:
                try:
                    self.ivf.save(cache_dir, key=key)
                except OSError as err:  # a read-only registry: keep the index in memory only
                    logger.info("cannot cache the sketch index in %s (%s)", cache_dir, err)

    @property
    def kind(self) -> str:
        return "exact" if self.exact is not None else "ivf"

    def search(self, query: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]:
        if self.exact is not None:
            return exact_search(self.exact, query, k)
        assert self.ivf is not None
        return self.ivf.search(query, k)
