"""Verification data: the fingerprint file stored for each registry entry, full or compact.

A fingerprint's whole-layer terms are [L, n, n] matrices (n ≈ 288 tokens): float16 costs ~0.16 MB per layer
and term, so a 32-layer model with 4 terms is ~21 MB; its head and expert sketches add C·r² values per unit and
term (32 heads × 2 terms ≈ 0.15 MB per layer in float16). To stay under the per-entry budget (16 MB by default)
the registry stores, in order of preference:

1. `float16` — the file `save_fingerprint` writes (lossless w.r.t. the saved fingerprint);
2. `float8` — the same terms as float8 e4m3 (the terms are z-scored and the sketches have unit RMS, so
   clamping at ±448 loses nothing real); half the bytes, score error well under 0.5 points (measured by
   `benchmarks/registry.py`);
3. `float8` with fewer layers, spread evenly over the depth, until the file fits.

Every form is an ordinary hubguard fingerprint file (`load_fingerprint` and `hubguard compare` read it),
with a `storage` field in its metadata saying what was kept.

A long-running reader (the Space, the webhook bot) verifies many uploads against the same few entries:
`load_verification` keeps the most recently read files (up to `MEMO_BYTES` of file bytes) and hands back the
same Fingerprint while the file's size, mtime and inode are unchanged. Sharing one object also lets a
candidate's cross readings, which are remembered per reference object, serve every later use of that entry in
the same check (search, then per-layer provenance) instead of reading the candidate's layers again. The
Fingerprints it returns are shared: callers must not modify them.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import HubguardError, RegistryCorruptError, RegistryError
from hubguard.utils.files import atomic_write
from hubguard.weights.plan import evenly_spaced

if TYPE_CHECKING:
    from hubguard.lineage.fingerprints import Fingerprint

DEFAULT_BUDGET_BYTES = 16 * 1024 * 1024
MEMO_BYTES = 128 * 1024 * 1024  # file bytes of verification data kept in memory (float32 in memory: about twice)
_memo: "OrderedDict[str, tuple[tuple[int, int, int], int, Fingerprint]]" = OrderedDict()
_memo_lock = threading.Lock()
STORAGES = ("auto", "float16", "float8")
_HEADER_SLACK = 64 * 1024  # JSON header (token strings, model facts)


def _payload_bytes(fp: "Fingerprint", *, itemsize: int, n_layers: int) -> int:
    import math

    per_layer = sum(math.prod(m.shape[1:]) for group in (fp.terms, fp.heads, fp.experts) for m in group.values())
    probe = 2 * fp.probe.numel() if fp.probe is not None else 0
    return per_layer * n_layers * itemsize + probe + _HEADER_SLACK


def plan_storage(fp: "Fingerprint", *, storage: str = "auto", budget_bytes: int = DEFAULT_BUDGET_BYTES) -> tuple[str, list[int]]:
    """(dtype, indices of the fingerprint's layers to keep) for `storage` under `budget_bytes`."""
    if storage not in STORAGES:
        raise RegistryError(f"Unknown verification storage '{storage}'; use one of {', '.join(STORAGES)}.")
    n_layers = len(fp.layers)
    every = list(range(n_layers))
    if storage == "float16":
        return "float16", every
    if storage == "auto" and _payload_bytes(fp, itemsize=2, n_layers=n_layers) <= budget_bytes:
        return "float16", every
    if _payload_bytes(fp, itemsize=1, n_layers=n_layers) <= budget_bytes:
        return "float8", every
    fixed = _payload_bytes(fp, itemsize=1, n_layers=0)
    per_layer = _payload_bytes(fp, itemsize=1, n_layers=1) - fixed
    keep = max(1, (budget_bytes - fixed) // max(per_layer, 1))
    return "float8", evenly_spaced(n_layers, int(keep))


def save_verification(
    fp: "Fingerprint", path: "str | os.PathLike[str]", *, storage: str = "auto", budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> tuple[Path, str]:
    """Write `fp` as verification data at `path` (atomically); returns (path, storage description)."""
    import torch
    from safetensors.torch import save_file

    from hubguard.lineage.fingerprint_files import fingerprint_metadata, fingerprint_tensors

    dtype, keep = plan_storage(fp, storage=storage, budget_bytes=budget_bytes)
    description = dtype if len(keep) == len(fp.layers) else f"{dtype}/layers={len(keep)}of{len(fp.layers)}"
    tensors = fingerprint_tensors(fp, keep=keep, dtype=torch.float8_e4m3fn if dtype == "float8" else torch.float16)
    meta: dict[str, Any] = fingerprint_metadata(fp, layers=[fp.layers[i] for i in keep])
    meta["storage"] = {"dtype": dtype, "layers_kept": len(keep), "layers_total": len(fp.layers), "all_layers": list(fp.layers)}
    metadata = {"hubguard": json.dumps(meta, ensure_ascii=False)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata)), description


def load_verification(path: "str | os.PathLike[str]") -> "Fingerprint":
    """Read verification data (remembered while the file is unchanged, see above); any defect becomes a
    `RegistryCorruptError` naming the file."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        st = None
    if st is None or not p.is_file():
        raise RegistryCorruptError(
            f"Verification data '{p}' is missing. The registry folder is incomplete; run `hubguard registry pull` "
            "or re-add the entry."
        )
    key, sig = str(p.resolve()), (st.st_mtime_ns, st.st_size, st.st_ino)
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None and hit[0] == sig:
            _memo.move_to_end(key)
            return hit[2]
    fp = _load(p)
    with _memo_lock:
        _memo[key] = (sig, st.st_size, fp)
        _memo.move_to_end(key)
        while len(_memo) > 1 and sum(size for _, size, _ in _memo.values()) > MEMO_BYTES:
            _memo.popitem(last=False)
    return fp


def _load(p: Path) -> "Fingerprint":
    from hubguard.lineage.fingerprint_files import load_fingerprint

    try:
        return load_fingerprint(p)
    except HubguardError as err:
        raise RegistryCorruptError(f"Verification data '{p}' cannot be used: {err}") from err
    except Exception as err:  # noqa: BLE001 - any parser failure on a registry file means the file is bad
        raise RegistryCorruptError(f"Verification data '{p}' is corrupted ({type(err).__name__}: {err}).") from err
