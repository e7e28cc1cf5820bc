"""The lineage registry: reference fingerprints of base models, searchable, stored as a Hub dataset folder."""

from hubguard.registry.store import Entry, Registry, SearchResult

__all__ = ["Entry", "Registry", "SearchResult"]
