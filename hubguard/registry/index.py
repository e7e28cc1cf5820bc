"""The search stage over sketches: exact (vectorised numpy) for small registries, a compressed full scan above.

Sketches are unit vectors, so similarity is a dot product. Below `EXACT_LIMIT` entries the whole [n, d] matrix
is scanned in float32 (one single-threaded pass). Above it, every sketch is also stored as a 4-bit product-quantisation
code (d/2 sub-spaces of 2 dimensions, 16 centroids each: d/4 bytes, 128 bytes for 512-d) that FAISS scans with
SIMD in-register look-up tables (`IndexPQFastScan`); the `RERANK` best codes are then re-scored exactly from the
float16 sketches. Why a full scan and not a partition or a graph: the registry is mostly unrelated models, whose
sketches are near-orthogonal random vectors, so a query's exact top 10 often holds entries at noise level
(cosine ~0.2 at 10⁶) that no clustering or neighbour graph can route to; a precise compressed scan finds them.
Measured (benchmarks/registry.py, 2 shared cores, registry-shaped synthetic sketches): 10⁶ entries p50 13.5 ms,
p99 21 ms, recall@10 0.995 against exact search (1.0 on entries with cosine ≥ 0.3), build 22 s, 1152 bytes per
entry in memory (float16 sketch + 128-byte code); 10⁵: p50 1.0 ms, recall@10 0.999. The IVF this replaces
reached recall@10 0.74 at 10⁵.

The index is built once and cached as one file in `cache_dir` (`sketch-index-v2.bin`: a magic, a JSON header
with the entries key, the parameters and the payload's sha256, then FAISS's own serialisation — no pickle). It
is written to a temporary name and renamed into place; a missing, stale or damaged file is rebuilt (with a log
message), reusing the trained codebooks of a stale one. Without FAISS (`pip install faiss-cpu`) every size is
searched exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryError
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_bytes

if TYPE_CHECKING:
    import numpy as np

logger = get_logger(__name__)

EXACT_LIMIT = 20_000  # below: exact float32 scan (≤ 40 MB, ~1 ms); above: PQ fast scan + exact re-rank
RERANK = 400  # candidates re-scored exactly from the float16 sketches
TRAIN_SIZE = 8_192  # rows sampled to train the PQ codebooks (16 centroids per 2-d sub-space)
INDEX_VERSION = 2
INDEX_FILE = f"sketch-index-v{INDEX_VERSION}.bin"
_MAGIC = b"HGSKIDX\x00"
_CHUNK = 65_536


def _topk(sims: "np.ndarray", k: int) -> "np.ndarray":
    import numpy as np

    k = min(k, sims.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-sims, k - 1)[:k] if k < sims.shape[0] else np.arange(sims.shape[0])
    return part[np.argsort(-sims[part], kind="stable")]


def _dot(rows: "np.ndarray", q: "np.ndarray") -> "np.ndarray":
    """rows @ q without BLAS threads: on shared cores a 2-thread GEMV waits a whole time slice for its second
    thread (~16 ms measured where a single-threaded loop takes 0.5 ms for 10⁴ x 512)."""
    import numpy as np

    return np.einsum("ij,j->i", rows, q)


def exact_search(matrix: "np.ndarray", query: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]:
    """(rows, similarities) of the k best rows of `matrix` for `query`, scanning in float32 chunks."""
    import numpy as np

    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if matrix.dtype == np.float32:
        sims = _dot(matrix, q)
    else:
        sims = np.empty(matrix.shape[0], dtype=np.float32)
        for s in range(0, matrix.shape[0], _CHUNK):
            sims[s : s + _CHUNK] = _dot(matrix[s : s + _CHUNK].astype(np.float32), q)
    rows = _topk(sims, k)
    return rows, sims[rows]


def matrix_key(names: list[str], matrix: "np.ndarray") -> str:
    """A digest of the entries (names, dtype, shape and every sketch value): the index cache is valid for it only."""
    import numpy as np

    h = hashlib.sha256()
    h.update(f"{matrix.dtype}:{matrix.shape}".encode())
    h.update("\0".join(names).encode())
    h.update(memoryview(np.ascontiguousarray(matrix)).cast("B"))
    return h.hexdigest()[:32]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _float32_rows(matrix: "np.ndarray", start: int, stop: int) -> "np.ndarray":
    import numpy as np

    return np.ascontiguousarray(matrix[start:stop], dtype=np.float32)


class PQFastScan:
    """4-bit product-quantisation codes of every sketch, scanned by FAISS; candidates re-ranked exactly."""

    def __init__(self, index: Any, *, trained_on: int) -> None:
        self.index = index
        self.trained_on = trained_on

    @property
    def subspaces(self) -> int:
        return int(self.index.pq.M)

    @staticmethod
    def supports(dim: int) -> bool:
        return dim >= 4 and dim % 4 == 0  # d/2 two-dimensional sub-spaces, an even number of them

    @classmethod
    def build(cls, matrix: "np.ndarray", *, template: "PQFastScan | None" = None, train_size: int = TRAIN_SIZE,
              seed: int = 0) -> "PQFastScan":
        """Train codebooks on a sample (or reuse `template`'s) and encode every row."""
        import faiss
        import numpy as np

        n, dim = matrix.shape
        if template is not None:
            index, trained_on = template.index, template.trained_on
            index.reset()
        else:
            index = faiss.IndexPQFastScan(dim, dim // 2, 4, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # d/2 tiny k-means: thread start-up costs more than it saves
            try:
                index.train(np.ascontiguousarray(matrix[sample], dtype=np.float32))
            finally:
                faiss.omp_set_num_threads(threads)
            trained_on = len(sample)
        for s in range(0, n, _CHUNK):
            index.add(_float32_rows(matrix, s, s + _CHUNK))
        return cls(index, trained_on=trained_on)

    def candidates(self, query: "np.ndarray", n: int) -> "np.ndarray":
        import numpy as np

        _, rows = self.index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), n)
        rows = rows[0]
        return rows[rows >= 0].astype(np.int64)

    # -- the cache file --------------------------------------------------------------------------------------

    def save(self, path: Path, *, key: str) -> None:
        """Write the index atomically: temporary file in the same folder, fsync, rename."""
        import faiss

        payload = faiss.serialize_index(self.index).tobytes()
        header = json.dumps({
            "format": "hubguard.registry.sketch-index", "version": INDEX_VERSION, "kind": "pq-fastscan",
            "key": key, "entries": int(self.index.ntotal), "dim": int(self.index.d), "subspaces": self.subspaces,
            "trained_on": self.trained_on, "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }).encode()
        atomic_write_bytes(path, _MAGIC + len(header).to_bytes(4, "little") + header + payload)

    @classmethod
    def load(cls, path: Path) -> tuple["PQFastScan", dict[str, Any]]:
        """The index in `path` and its header. Raises ValueError (saying what is wrong) or OSError."""
        import faiss
        import numpy as np

        data = path.read_bytes()
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
            raise ValueError("not a hubguard sketch index (bad magic)")
        hlen = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
        start = len(_MAGIC) + 4 + hlen
        try:
            header = json.loads(data[len(_MAGIC) + 4 : start])
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"unreadable header ({err})") from err
        if not isinstance(header, dict) or header.get("version") != INDEX_VERSION:
            raise ValueError(f"index version {header.get('version') if isinstance(header, dict) else '?'} "
                             f"is not {INDEX_VERSION}")
        payload = data[start:]
        if len(payload) != header.get("payload_bytes") or hashlib.sha256(payload).hexdigest() != header.get(
            "payload_sha256"
        ):
            raise ValueError("payload checksum mismatch (truncated or damaged)")
        try:
            index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as err:
            raise ValueError(f"FAISS could not read the payload ({str(err).splitlines()[0][:200]})") from err
        if not isinstance(index, faiss.IndexPQFastScan) or index.ntotal != header.get("entries") or index.d != header.get(
            "dim"
        ):
            raise ValueError("payload does not match its header")
        return cls(index, trained_on=int(header.get("trained_on", 0))), header


class SketchSearcher:
    """Exact below `exact_limit` entries, PQ fast scan + exact re-rank above; the index is cached in `cache_dir`.

    `search(query, k)` returns (rows, cosines) of the k best entries, best first, k capped at the entry count.
    """

    def __init__(self, matrix: "np.ndarray", *, names: list[str], cache_dir: Path | None = None,
                 exact_limit: int = EXACT_LIMIT, rerank: int = RERANK) -> None:
        import numpy as np

        if len(names) != matrix.shape[0]:
            raise RegistryError(f"The sketch index got {len(names)} names for {matrix.shape[0]} sketches; they must "
                                "be the rows of one entries table.")
        self.n, self.dim = matrix.shape
        self.rerank = rerank
        self.matrix = matrix
        self.exact: np.ndarray | None = None
        self.pq: PQFastScan | None = None
        self.cache_path = None if cache_dir is None else Path(cache_dir) / INDEX_FILE
        self.loaded_from_cache = False
        if self.n < exact_limit or not PQFastScan.supports(self.dim) or not faiss_available():
            if self.n >= exact_limit and PQFastScan.supports(self.dim):
                logger.info("faiss is not installed: searching %d sketches exactly (pip install faiss-cpu for the "
                            "fast index)", self.n)
            self.exact = matrix if matrix.dtype == np.float32 else matrix.astype(np.float32)
            return
        key = matrix_key(names, matrix)
        template = None
        if self.cache_path is not None:
            self.pq, template = self._load_cached(key)
        if self.pq is None:
            if template is not None and template.trained_on < min(self.n, TRAIN_SIZE) // 2:
                template = None  # trained on a much smaller registry: train again
            logger.info("building the sketch index over %d entries", self.n)
            self.pq = PQFastScan.build(matrix, template=template)
            if self.cache_path is not None:
                try:
                    self.pq.save(self.cache_path, key=key)
                except OSError as err:  # a read-only registry: keep the index in memory only
                    logger.info("cannot cache the sketch index in %s (%s)", self.cache_path, err)

    def _load_cached(self, key: str) -> tuple[PQFastScan | None, PQFastScan | None]:
        """(index for `key`, or None; a stale but valid index whose codebooks can be reused, or None)."""
        assert self.cache_path is not None
        if not self.cache_path.exists():
            return None, None
        try:
            pq, header = PQFastScan.load(self.cache_path)
        except (OSError, ValueError, MemoryError) as err:
            logger.warning("the sketch index cache %s is unreadable (%s); rebuilding it", self.cache_path, err)
            return None, None
        if pq.index.d != self.dim:
            return None, None
        if header.get("key") != key or pq.index.ntotal != self.n:
            logger.info("the registry entries changed since the sketch index was cached; rebuilding it")
            return None, pq
        self.loaded_from_cache = True
        return pq, None

    @property
    def kind(self) -> str:
        return "exact" if self.exact is not None else "pq-fastscan"

    @property
    def index_bytes(self) -> int:
        """Memory of the search structure beyond the float16 sketches (the float32 copy or the PQ codes)."""
        if self.exact is not None:
            return 0 if self.exact is self.matrix else int(self.exact.nbytes)
        assert self.pq is not None
        return int(self.pq.index.ntotal) * int(self.pq.index.code_size) + 4 * self.dim * 16

    def search(self, query: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]:
        import numpy as np

        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise RegistryError(f"The query sketch has {q.shape[0]} values but the registry's sketches have "
                                f"{self.dim}; the registry was built with another sketch version — rebuild it.")
        k = min(int(k), self.n)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self.exact is not None:
            return exact_search(self.exact, q, k)
        assert self.pq is not None
        n_cand = min(self.n, max(self.rerank, 4 * k))
        if n_cand >= self.n // 2:
            return exact_search(self.matrix, q, k)
        cand = np.unique(self.pq.candidates(q, n_cand))  # sorted rows: a forward gather
        sims = _dot(np.asarray(self.matrix[cand], dtype=np.float32), q)
        best = _topk(sims, k)
        return cand[best], sims[best]
