"""Fingerprint files: a fingerprint's terms as safetensors (float16) with versioned JSON metadata.

Readers refuse other major method versions with a clear error, ignore metadata fields they do not know, and
check every shape against the metadata before use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hubguard import constants
from hubguard.errors import FingerprintError, HubguardError, IncompatibleFingerprintError
from hubguard.lineage.fingerprints import Fingerprint
from hubguard.utils.files import atomic_write

FINGERPRINT_FORMAT = "hubguard.fingerprint"


def fingerprint_metadata(fp: Fingerprint, *, layers: list[int] | None = None) -> dict[str, Any]:
    """The versioned JSON metadata stored with a fingerprint's tensors (`layers`: those actually stored)."""
    return {
        "format": FINGERPRINT_FORMAT,
        "schema_version": constants.FINGERPRINT_SCHEMA_VERSION,
        "method": fp.method,
        "version": fp.version,
        "token_set": fp.token_set,
        "tokens": list(fp.tokens),
        "layers": list(fp.layers) if layers is None else layers,
        "model": fp.model,
        "stats": fp.stats,
    }


def save_fingerprint(fp: Fingerprint, path: "str | os.PathLike[str]") -> Path:
    """Write a fingerprint as safetensors (float16 terms + versioned JSON metadata), atomically."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    meta = fingerprint_metadata(fp)
    tensors = {f"terms.{t}": m.to(torch.float16).contiguous() for t, m in fp.terms.items()}
    if fp.probe is not None:
        tensors["probe"] = fp.probe.to(torch.float16).contiguous()
    metadata = {"hubguard": json.dumps(meta, ensure_ascii=False)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def is_fingerprint_file(path: "str | os.PathLike[str]") -> bool:
    """True if `path` is a safetensors file written by `save_fingerprint`."""
    from hubguard.weights.safetensors import parse_header
    from hubguard.weights.store import LocalStore

    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return False
    try:
        _, meta = parse_header(store=LocalStore(p), file=p.name)
    except HubguardError:
        return False  # unreadable: not a fingerprint (fingerprinting it as weights says what is wrong)
    return "hubguard" in meta and f'"format": "{FINGERPRINT_FORMAT}"' in meta["hubguard"]


def _metadata(raw: str | None, where: str) -> dict[str, Any]:
    from hubguard.utils.jsonsafe import loads_untrusted

    if raw is None:
        raise FingerprintError(f"'{where}' is a safetensors file but not a hubguard fingerprint. Make one with "
                               "`hubguard fingerprint`.")
    meta = loads_untrusted(raw, what=f"the metadata of '{where}'", error=FingerprintError, max_bytes=16 << 20)
    if not isinstance(meta, dict) or meta.get("format") != FINGERPRINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise FingerprintError(f"'{where}' is not a hubguard fingerprint (format={found!r}).")
    if meta.get("method") != constants.FINGERPRINT_METHOD or meta.get("version") != constants.FINGERPRINT_VERSION:
        raise IncompatibleFingerprintError(
            f"'{where}' was made with {meta.get('method')} v{meta.get('version')}; this hubguard computes "
            f"{constants.FINGERPRINT_METHOD} v{constants.FINGERPRINT_VERSION}. Re-fingerprint the model from its weights."
        )
    tokens, layers = meta.get("tokens"), meta.get("layers")
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens) and len(set(tokens)) == len(tokens)):
        raise FingerprintError(f"'{where}': its metadata's 'tokens' must be a list of distinct strings.")
    if not (isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
        raise FingerprintError(f"'{where}': its metadata's 'layers' must be a list of layer indices.")
    for key in ("model", "stats"):
        if not isinstance(meta.get(key, {}), dict):
            raise FingerprintError(f"'{where}': its metadata's '{key}' must be an object.")
    if not isinstance(meta.get("token_set", "v1"), str):
        raise FingerprintError(f"'{where}': its metadata's 'token_set' must be a string.")
    return meta


def load_fingerprint(path: "str | os.PathLike[str]") -> Fingerprint:
    """Read a fingerprint file; refuses other major versions with a clear error. Unknown fields are ignored."""
    import torch

    from hubguard.weights.safetensors import SafetensorsCheckpoint
    from hubguard.weights.store import LocalStore

    p = Path(path)
    st = SafetensorsCheckpoint(store=LocalStore(p))
    meta = _metadata(st.metadata.get("hubguard"), str(p))
    n_tok, n_lay = len(meta["tokens"]), len(meta["layers"])
    terms = {n.removeprefix("terms."): st.get(n) for n in st.names() if n.startswith("terms.")}
    if not terms:
        raise FingerprintError(f"'{p}' holds no invariant terms; it is not a usable fingerprint.")
    for t, m in terms.items():
        if tuple(m.shape) != (n_lay, n_tok, n_tok):
            raise FingerprintError(f"'{p}': term '{t}' has shape {list(m.shape)}, expected {[n_lay, n_tok, n_tok]}.")
        if not bool(torch.isfinite(m).all()):
            raise FingerprintError(f"'{p}': term '{t}' holds NaN or Inf values; the file is corrupted.")
    probe = st.get("probe") if "probe" in st else None
    if probe is not None and (probe.dim() != 2 or probe.shape[0] != n_tok):
        raise FingerprintError(f"'{p}': its probe has shape {list(probe.shape)}, expected [{n_tok}, hidden].")
    return Fingerprint(
        tokens=tuple(meta["tokens"]), layers=tuple(meta["layers"]), terms=terms, model=dict(meta.get("model") or {}),
        token_set=meta.get("token_set", "v1"), method=meta["method"], version=meta["version"],
        stats=dict(meta.get("stats") or {}), probe=probe,
    )
