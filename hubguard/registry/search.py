"""Registry search: nearest sketches (`hubguard.registry.index`), then the verification pipeline on each."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryCorruptError, RegistryError
from hubguard.registry.entries import Entry

if TYPE_CHECKING:
    from hubguard.lineage.candidate import Candidate
    from hubguard.lineage.comparison import Comparison
    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry.store import Registry


@dataclass(frozen=True)
class SearchResult:
    """A verified match: the full comparison of the entry (reference) with the query (candidate)."""

    name: str
    score: float
    z: float
    verdict: str
    sketch_similarity: float
    entry: Entry
    comparison: "Comparison" = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "name": self.name,
            "score": self.score,
            "z": self.z,
            "verdict": self.verdict,
            "false_positive_rate": c.false_positive_rate,
            "sketch_similarity": round(self.sketch_similarity, 4),
            "terms": c.terms,
            "matched_layers": c.matched_layers,
            "common_tokens": c.common_tokens,
            "layers": [asdict(m) for m in c.layers],
            "notes": list(c.notes),
            "entry": self.entry.to_dict(),
        }


def search(
registry: "Registry", source: "Candidate | Fingerprint | str | os.PathLike[str]", *, top_k: int = 5, candidates: int | None = None,
    exclude: list[str] | None = None,
) -> list[SearchResult]:
    """Two-stage search: nearest sketches, then the verification pipeline (`hubguard.lineage.verify`) on each
    candidate entry; best score first. A weight source's layers are also read through each entry's token
    rows, which finds layers copied under another embedding."""
    from hubguard.lineage.candidate import open_candidate
    from hubguard.lineage.sketch import sketch
    from hubguard.lineage.verify import verify_many

    if top_k < 1:
        raise RegistryError(f"--top-k must be at least 1 (got {top_k}).")
    candidate = open_candidate(source)
    n_cand = candidates or max(4 * top_k, 16)
    skip = set(exclude or ())
    found: list[tuple[Entry, float, Fingerprint]] = []
    for name, sim in registry.nearest(sketch(candidate.fingerprint), k=n_cand + len(skip)):
        if name in skip:
            continue
        try:
            entry = registry.show(name)
        except RegistryCorruptError:
            raise
        except RegistryError:
            continue  # removed by another process while we searched
        if entry.fingerprint_file and not (registry.path / entry.fingerprint_file).exists() and name not in registry.names():
            continue  # removed between reading the entry and its verification data
        found.append((entry, sim, registry.fingerprint(name)))
    comparisons = verify_many(references=[ref for _, _, ref in found], candidate=candidate)
    results = [SearchResult(name=e.name, score=c.score, z=c.z, verdict=c.verdict, sketch_similarity=sim, entry=e,
                            comparison=c) for (e, sim, _), c in zip(found, comparisons)]
    results.sort(key=lambda r: (-r.score, r.name))
    return results[:top_k]
