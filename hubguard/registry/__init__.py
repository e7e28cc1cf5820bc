"""The lineage registry: reference fingerprints of base models, searchable, stored as a Hub dataset folder."""

from hubguard.registry.entries import Entry
from hubguard.registry.search import SearchResult
from hubguard.registry.store import Registry

__all__ = ["Entry", "Registry", "SearchResult"]
