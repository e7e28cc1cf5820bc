"""Where bytes come from: local folders and files, `hf://` repos over HTTP Range, safetensors headers, architecture
maps as typed specs, binding, canonicalisation and reading plans. `open_model(source)` is the entry point."""

from hubguard.weights.model import ModelWeights, open_model
from hubguard.weights.source import Checkpoint, HubRef, open_source

__all__ = ["Checkpoint", "HubRef", "ModelWeights", "open_model", "open_source"]
