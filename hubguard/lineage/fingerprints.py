"""Fingerprints: the invariant terms of many layers over a versioned token set, saved as safetensors.

`compute_fingerprint(source)` streams a checkpoint layer by layer: it reads the safetensors headers, the
embedding rows of the token set (not the whole matrix), then one layer's matrices at a time, so peak memory
is about one layer. The result can be saved (`save_fingerprint`) and compared later with any fingerprint of
the same method version.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import CorruptCheckpointError, FingerprintError, IncompatibleFingerprintError, TokenizerError
from hubguard.utils import get_logger, progress
from hubguard.utils.files import atomic_write

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from hubguard.weights.canonical import CanonicalLayer
    from hubguard.weights.source import Checkpoint

logger = get_logger(__name__)

MIN_TOKENS = 32  # fewer shared tokens than this cannot support a verdict
FINGERPRINT_FORMAT = "hubguard.fingerprint"


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Invariant terms of one model.

    Attributes:
        tokens: canonical token keys (in token-set order) whose embedding rows were used; n = len(tokens).
        layers: model layer indices the terms come from.
        terms: term name -> float32 tensor [len(layers), n, n], each [n, n] slice z-scored off-diagonal.
        model: facts about the source (family, sizes, tokenizer hash, ...).
        stats: reading cost (bytes_read, bytes_total, requests, seconds).
        probe: optional [n, d] float32: the normalised, decorrelated token rows the terms were computed over.
            Kept for registry references (`keep_probe=True`): with it, a candidate's layers can be read through
            this model's embedding, which finds layers copied under another embedding (frankenmerges,
            re-trained embeddings). It reveals those n embedding rows, so it is off by default.
    """

    tokens: tuple[str, ...]
    layers: tuple[int, ...]
    terms: dict[str, "torch.Tensor"]
    model: dict[str, Any]
    token_set: str = "v1"
    method: str = constants.FINGERPRINT_METHOD
    version: int = constants.FINGERPRINT_VERSION
    stats: dict[str, Any] = field(default_factory=dict)
    probe: "torch.Tensor | None" = None

    @property
    def name(self) -> str:
        return str(self.model.get("name") or self.model.get("source") or "model")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no tensors)."""
        return {
            "name": self.name,
            "method": self.method,
            "version": self.version,
            "token_set": self.token_set,
            "n_tokens": len(self.tokens),
            "layers": list(self.layers),
            "terms": sorted(self.terms),
            "model": self.model,
            "stats": self.stats,
        }


# --- computing ---------------------------------------------------------------------------------------


def fingerprint_checkpoint(
    *,
    checkpoint: "Checkpoint",
    token_set: str = "v1",
    layers: list[int] | None = None,
    max_layers: int | None = None,
    budget: "float | str | None" = "auto",
    name: str | None = None,
    keep_probe: bool = False,
    on_layer: "Callable[[CanonicalLayer], None] | None" = None,
) -> Fingerprint:
    """Fingerprint an opened checkpoint (see `compute_fingerprint` for the arguments).

    on_layer: called with each canonical layer as it is read (e.g. to compute cross-embedding terms in the
    same pass).
    """
    import torch

    from hubguard.weights.binding import bind_architecture
    from hubguard.weights.canonical import LayerReader
    from hubguard.weights.plan import embedding_gap, plan_reads
    from hubguard.lineage.terms import decorrelate_tokens, layer_terms, normalise_rows, standardise
    from hubguard.lineage.tokens import load_token_set, load_vocabulary

    start = time.perf_counter()
    tensors = checkpoint.tensors
    arch = bind_architecture(config=checkpoint.config, tensor_names=tensors.names(), source=checkpoint.source)
    vocab = load_vocabulary(checkpoint.store)
    keys, ids = vocab.lookup(list(load_token_set(token_set)))
    emb_name = arch.embedding_name
    emb_rows = tensors.info(emb_name).shape[0]
    usable = [(k, i) for k, i in zip(keys, ids) if i < emb_rows]
    if len(usable) < MIN_TOKENS:
        raise TokenizerError(
            f"'{checkpoint.source}': only {len(usable)} of the {len(load_token_set(token_set))} tokens of token set "
            f"'{token_set}' are in its vocabulary (need {MIN_TOKENS}). Is the tokenizer the model's own? A model "
            "with a non-English or character-level vocabulary needs another token set."
        )
    keys = [k for k, _ in usable]
    rows = [i for _, i in usable]
    reader = LayerReader(tensors=tensors, arch=arch)
    total = tensors.total_bytes()
    gap = embedding_gap(tensors=tensors, name=emb_name, rows=rows, budget=budget, total_bytes=total)
    plan = plan_reads(
        reader=reader, n_layers=arch.num_layers, layers=layers, max_layers=max_layers, budget=budget,
        total_bytes=total, embedding_bytes=tensors.rows_bytes(emb_name, rows, max_gap=gap),
    )
    x = tensors.get_rows(emb_name, rows, max_gap=gap)
    if x.shape[1] != arch.hidden_size:
        raise CorruptCheckpointError(f"Embedding rows are {x.shape[1]} wide but the hidden size is {arch.hidden_size}.")
    x = decorrelate_tokens(normalise_rows(x, centre=arch.spec.norm.type == "layer"))

    chosen = list(plan.layers)
    per_term: dict[str, list[torch.Tensor]] = {}
    for li in progress(chosen, desc=f"fingerprint {Path(checkpoint.source).name or checkpoint.source}", total=len(chosen)):
        if plan.mode == "qk_heads":
            layer = reader.read_qk_heads(li, kv_heads=plan.kv_heads or 1)
        else:
            layer = reader.read(li, with_ffn=plan.mode == "full")
        for tname, m in layer_terms(layer=layer, x=x).items():
            per_term.setdefault(tname, []).append(standardise(m))
        if on_layer is not None:
            on_layer(layer)
        del layer
    terms = {t: torch.stack(ms) for t, ms in per_term.items()}
    params = sum(
        int(torch.tensor(info.shape).prod().item()) if info.shape else 1 for info in (tensors.info(n) for n in tensors.names())
    )
    model = {
        "source": checkpoint.source,
        "name": name or checkpoint.source,
        "family": arch.family,
        "model_type": checkpoint.config.get("model_type"),
        "architectures": checkpoint.config.get("architectures"),
        "num_layers": arch.num_layers,
        "hidden_size": arch.hidden_size,
        "num_heads": arch.num_heads,
        "num_kv_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "parameters": params,
        "vocab_size": emb_rows,
        "tokenizer_sha256": vocab.sha256,
        "tokenizer_style": vocab.style,
        "revision": getattr(checkpoint.store, "sha", None) or getattr(checkpoint.store, "revision", None),
    }
    stats = {
        "bytes_read": checkpoint.stats.bytes_read,
        "bytes_total": tensors.total_bytes(),
        "requests": checkpoint.stats.requests,
        "seconds": round(time.perf_counter() - start, 3),
        "budget": budget,
        "plan": plan.to_dict(),
        "ffn_read": plan.mode == "full",
    }
    logger.info("fingerprinted %s: %d layers, %d tokens, %.1f%% of bytes", checkpoint.source, len(chosen), len(keys),
                100 * stats["bytes_read"] / max(stats["bytes_total"], 1))
    return Fingerprint(
        tokens=tuple(keys), layers=tuple(chosen), terms=terms, model=model, token_set=token_set, stats=stats,
        probe=x.clone() if keep_probe else None,
    )


def compute_fingerprint(
    source: "str | os.PathLike[str] | Checkpoint",
    *,
    token_set: str = "v1",
    layers: list[int] | None = None,
    max_layers: int | None = None,
    budget: "float | str | None" = "auto",
    allow_pickle: bool = False,
    token: str | None = None,
    name: str | None = None,
    keep_probe: bool = False,
) -> Fingerprint:
    """Fingerprint a model folder, a `.safetensors` file, or `hf://ORG/NAME[@REV]`.

    Args:
        source: where the weights are (or an already opened `Checkpoint`).
        token_set: version of the token set used to pick embedding rows.
        layers: explicit layer indices; default: every layer (or `max_layers` spread evenly).
        budget: reading budget — a fraction of the checkpoint's bytes, "auto" (everything up to 1 GiB, else
            2%), or None (everything); see `plan_reads`.
        allow_pickle: read `.bin`/`.pt` weights with `torch.load(weights_only=True)` (never plain unpickling).
        token: Hub token for gated/private repos (default: HF_TOKEN).
        keep_probe: keep the token rows in the fingerprint (see `Fingerprint.probe`).
    """
    from hubguard.weights.source import Checkpoint, open_source

    ckpt = source if isinstance(source, Checkpoint) else open_source(source, allow_pickle=allow_pickle, token=token)
    return fingerprint_checkpoint(
        checkpoint=ckpt, token_set=token_set, layers=layers, max_layers=max_layers, budget=budget, name=name,
        keep_probe=keep_probe,
    )


# --- saving and loading --------------------------------------------------------------------------------


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
    except FingerprintError:
        return False
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not a fingerprint" here
        return False
    return "hubguard" in meta and '"format": "hubguard.fingerprint"' in meta["hubguard"]


def load_fingerprint(path: "str | os.PathLike[str]") -> Fingerprint:
    """Read a fingerprint file; refuses other major versions with a clear error. Unknown fields are ignored."""
    from hubguard.weights.safetensors import SafetensorsCheckpoint
    from hubguard.weights.store import LocalStore

    p = Path(path)
    st = SafetensorsCheckpoint(store=LocalStore(p))
    try:
        meta = json.loads(st.metadata["hubguard"])
    except (KeyError, json.JSONDecodeError) as err:
        raise FingerprintError(f"'{p}' is a safetensors file but not a hubguard fingerprint. Make one with `hubguard fingerprint`.") from err
    if meta.get("format") != FINGERPRINT_FORMAT:
        raise FingerprintError(f"'{p}' is not a hubguard fingerprint (format={meta.get('format')!r}).")
    if meta.get("method") != constants.FINGERPRINT_METHOD or int(meta.get("version", -1)) != constants.FINGERPRINT_VERSION:
        raise IncompatibleFingerprintError(
            f"'{p}' was made with {meta.get('method')} v{meta.get('version')}; this hubguard computes "
            f"{constants.FINGERPRINT_METHOD} v{constants.FINGERPRINT_VERSION}. Re-fingerprint the model from its weights."
        )
    terms = {n.removeprefix("terms."): st.get(n) for n in st.names() if n.startswith("terms.")}
    probe = st.get("probe") if "probe" in st else None
    if probe is not None and (probe.dim() != 2 or probe.shape[0] != len(meta["tokens"])):
        raise FingerprintError(f"'{p}': its probe has shape {list(probe.shape)}, expected [{len(meta['tokens'])}, hidden].")
    n_tok, n_lay = len(meta["tokens"]), len(meta["layers"])
    for t, m in terms.items():
        if tuple(m.shape) != (n_lay, n_tok, n_tok):
            raise FingerprintError(f"'{p}': term '{t}' has shape {list(m.shape)}, expected {[n_lay, n_tok, n_tok]}.")
    return Fingerprint(
        tokens=tuple(meta["tokens"]),
        layers=tuple(int(i) for i in meta["layers"]),
        terms=terms,
        model=dict(meta.get("model") or {}),
        token_set=meta.get("token_set", "v1"),
        method=meta["method"],
        version=int(meta["version"]),
        stats=dict(meta.get("stats") or {}),
        probe=probe,
    )
