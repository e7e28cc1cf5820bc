"""The last few candidates a long-running checker (the Space, the webhook bot) made, by the identity of their bytes.

Checking the same unchanged model twice need not fingerprint it twice: a candidate (its fingerprint, and the
cross readings of its layers through the references it already met) is kept under a key that changes whenever
the bytes may have: for a Hub repo its resolved commit sha; for a local folder or file every file's relative
path, size and modification time. Stores without such an identity are never remembered. The registry search,
the verification against each entry and the verdict are made afresh on every check; only the reading of the
candidate's weights is saved.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubguard.lineage.candidate import Candidate
    from hubguard.weights.store import ByteStore

DEFAULT_SIZE = 4  # candidates kept; each holds a fingerprint (a few MB) and lazy weight handles


def content_key(store: "ByteStore", **options: Any) -> Hashable | None:
    """A key that changes when the bytes behind `store` may have changed, with the reading `options`; None when
    the store has no such identity."""
    from hubguard.weights.store import LocalStore

    opts = tuple(sorted((k, str(v)) for k, v in options.items()))
    sha, repo = getattr(store, "sha", None), getattr(store, "repo_id", None)
    if isinstance(sha, str) and isinstance(repo, str) and len(sha) == 40:
        return ("hf", repo, sha, opts)
    if not isinstance(store, LocalStore):
        return None
    files = []
    for name in store.list_files():
        try:
            st = os.stat(store.path(name))
        except OSError:
            return None
        files.append((name, st.st_size, st.st_mtime_ns))
    return ("local", str(store.root.resolve()), store.single_file, tuple(files), opts)


class CandidateMemo:
    """A small least-recently-used map from `content_key` to Candidate, safe to share between threads."""

    def __init__(self, *, size: int = DEFAULT_SIZE) -> None:
        self.size = max(1, int(size))
        self._items: OrderedDict[Hashable, Candidate] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: Hashable | None) -> "Candidate | None":
        if key is None:
            return None
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return hit

    def put(self, key: Hashable | None, candidate: "Candidate") -> None:
        if key is None:
            return
        with self._lock:
            self._items[key] = candidate
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
