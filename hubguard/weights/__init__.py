"""Weight sources (local folder, single file, sharded index, remote over HTTP Range), architecture maps as
data, and canonicalisation."""

from hubguard.weights.source import Checkpoint, HubRef, open_source

__all__ = ["Checkpoint", "HubRef", "open_source"]
