"""Fingerprint files: a fingerprint's terms as safetensors (float16) with versioned JSON metadata.

Tensors: `terms.<name>` [L, n, n] (whole-layer terms), `heads.<name>` [L, H, C, r, r] and `experts.<name>`
[L, E, C, r, r] (unit sketches), and optionally `probe` [n, d]. The metadata's `units` object holds the sketch
shape and, per layer, the head count and which experts are shared. Readers refuse other major method versions
with a clear error, ignore metadata fields they do not know, and check every shape against the metadata before
use.
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
F8_MAX = 448.0  # largest float8 e4m3 value


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
        "units": units_metadata(fp, layers=None if layers is None else [fp.layers.index(i) for i in layers]),
    }


def units_metadata(fp: Fingerprint, *, layers: list[int] | None = None) -> dict[str, Any]:
    """The sketch shape and per-layer unit counts (`layers`: positions of the stored layers)."""
    from hubguard.lineage.unit_terms import UNIT_COPIES, UNIT_RANK

    keep = range(len(fp.layers)) if layers is None else layers
    return {"rank": UNIT_RANK, "copies": UNIT_COPIES, "head_counts": [fp.head_counts[i] for i in keep],
            "expert_shared": [list(fp.expert_shared[i]) for i in keep]}


def fingerprint_tensors(fp: Fingerprint, *, keep: list[int] | None = None, dtype: "Any" = None) -> dict[str, Any]:
    """The tensors of a fingerprint file: layers at positions `keep` (default all), cast to `dtype` (default
    float16; float8 values are clamped to its range first)."""
    import torch

    dtype = dtype or torch.float16
    idx = torch.arange(len(fp.layers)) if keep is None else torch.tensor(keep, dtype=torch.long)
    out = {}
    for prefix, group in (("terms", fp.terms), ("heads", fp.heads), ("experts", fp.experts)):
        for t, m in group.items():
            kept = m.index_select(0, idx).float()
            if dtype == torch.float8_e4m3fn:
                kept = kept.clamp(-F8_MAX, F8_MAX)
            out[f"{prefix}.{t}"] = kept.to(dtype).contiguous()
    if fp.probe is not None:  # the token rows, for cross-embedding reading (hubguard.lineage.cross)
        out["probe"] = fp.probe.to(torch.float16).contiguous()
    return out


def save_fingerprint(fp: Fingerprint, path: "str | os.PathLike[str]") -> Path:
    """Write a fingerprint as safetensors (float16 terms + versioned JSON metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = fingerprint_metadata(fp)
    tensors = fingerprint_tensors(fp)
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
    groups = {prefix: {n.removeprefix(prefix + "."): st.get(n) for n in st.names() if n.startswith(prefix + ".")}
              for prefix in ("terms", "heads", "experts")}
    if not (groups["terms"] or groups["heads"]):
        raise FingerprintError(f"'{p}' holds no invariant terms; it is not a usable fingerprint.")
    for t, m in groups["terms"].items():
        if tuple(m.shape) != (n_lay, n_tok, n_tok):
            raise FingerprintError(f"'{p}': term '{t}' has shape {list(m.shape)}, expected {[n_lay, n_tok, n_tok]}.")
    head_counts, expert_shared = _units(meta, groups=groups, n_layers=n_lay, where=str(p))
    for prefix, group in groups.items():
        for t, m in group.items():
            if not bool(torch.isfinite(m.float()).all()):
                raise FingerprintError(f"'{p}': {prefix} term '{t}' holds NaN or Inf values; the file is corrupted.")
    probe = st.get("probe") if "probe" in st else None
    if probe is not None and (probe.dim() != 2 or probe.shape[0] != n_tok):
        raise FingerprintError(f"'{p}': its probe has shape {list(probe.shape)}, expected [{n_tok}, hidden].")
    return Fingerprint(
        tokens=tuple(meta["tokens"]), layers=tuple(meta["layers"]), terms={t: m.float() for t, m in groups["terms"].items()},
        model=dict(meta.get("model") or {}), token_set=meta.get("token_set", "v1"), method=meta["method"],
        version=meta["version"], stats=dict(meta.get("stats") or {}), probe=probe,
        heads={t: m.float() for t, m in groups["heads"].items()}, head_counts=head_counts,
        experts={t: m.float() for t, m in groups["experts"].items()}, expert_shared=expert_shared,
    )


def _units(meta: dict[str, Any], *, groups: dict[str, dict[str, Any]], n_layers: int,
           where: str) -> tuple[tuple[int, ...], tuple[tuple[bool, ...], ...]]:
    """Validated per-layer head counts and shared-expert flags; every unit sketch's shape checked against them."""
    from hubguard.lineage.unit_terms import UNIT_COPIES, UNIT_RANK

    units = meta.get("units")
    if not isinstance(units, dict):
        raise FingerprintError(f"'{where}': its metadata has no 'units' object (sketch shape, head counts).")
    counts, shared = units.get("head_counts"), units.get("expert_shared")
    if units.get("rank") != UNIT_RANK or units.get("copies") != UNIT_COPIES:
        raise IncompatibleFingerprintError(f"'{where}' holds unit sketches of rank {units.get('rank')} x "
                                           f"{units.get('copies')} copies; this hubguard uses {UNIT_RANK} x {UNIT_COPIES}. "
                                           "Re-fingerprint the model from its weights.")
    if not (isinstance(counts, list) and len(counts) == n_layers and all(_is_count(c) for c in counts)):
        raise FingerprintError(f"'{where}': its metadata's 'units.head_counts' must list one head count per layer.")
    if not (isinstance(shared, list) and len(shared) == n_layers
            and all(isinstance(s, list) and all(isinstance(x, bool) for x in s) for s in shared)):
        raise FingerprintError(f"'{where}': its metadata's 'units.expert_shared' must list, per layer, one flag per expert.")
    for prefix, most in (("heads", max(counts, default=0)), ("experts", max((len(s) for s in shared), default=0))):
        for t, m in groups[prefix].items():
            if m.dim() != 5 or m.shape[0] != n_layers or m.shape[1] < most or tuple(m.shape[2:]) != (UNIT_COPIES, UNIT_RANK, UNIT_RANK):
                raise FingerprintError(f"'{where}': {prefix} term '{t}' has shape {list(m.shape)}, expected "
                                       f"[{n_layers}, >= {most}, {UNIT_COPIES}, {UNIT_RANK}, {UNIT_RANK}].")
    return tuple(counts), tuple(tuple(s) for s in shared)


def _is_count(c: Any) -> bool:
    return isinstance(c, int) and not isinstance(c, bool) and c >= 0
