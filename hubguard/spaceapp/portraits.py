"""Dog portraits for the Space, remembered: a registry entry's dog is drawn once per verification file (the
encoder pass costs seconds on a small CPU), a query's once per fingerprint object."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from hubguard.spaceapp.html import DOG_PX

if TYPE_CHECKING:
    from PIL import Image

    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry import Registry

MAX_CACHED = 256
_cache: OrderedDict[tuple, "Image.Image"] = OrderedDict()
_lock = threading.Lock()


def _remember(key: tuple, draw) -> "Image.Image":  # noqa: ANN001 - a zero-argument drawing function
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    img = draw()
    with _lock:
        _cache[key] = img
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return img


def entry_dog(registry: "Registry", name: str) -> "Image.Image":
    """The dog of registry entry `name` (redrawn when its verification data changes)."""
    from hubguard.portraits.dogs import dog_image

    entry = registry.show(name)
    key = ("entry", str(registry.path), name, entry.fingerprint_file, entry.fingerprint_bytes, entry.added_at)
    return _remember(key, lambda: dog_image(registry.fingerprint(name), size=DOG_PX))


def fingerprint_dog(fp: "Fingerprint") -> "Image.Image":
    from hubguard.portraits.dogs import dog_image

    return _remember(("fp", id(fp)), lambda: dog_image(fp, size=DOG_PX))
