"""A PEFT LoRA adapter on its base: the tensors of base ⊕ adapter, computed per tensor read.

For every tensor the base's target modules hold, `LoraOverlay` returns W = W0 + s·B·A (s = lora_alpha / r, or
lora_alpha / sqrt(r) with rslora; `alpha_pattern` per module), read the way the base's tensors are read: the whole
tensor, or only some rows (W[rows] = W0[rows] + s·B[rows]·A), so head slices and token rows cost the same range
reads as on the base alone. Tensors PEFT saves whole (`modules_to_save`, embedding `base_layer` weights) replace
the base's. Shapes (out, in; r the rank):

    Linear:     W0 [out, in]   A [r, in]   B [out, r]         W = W0 + s·B·A
    Conv1D:     W0 [in, out]   (fan_in_fan_out)               W = W0 + s·(B·A)ᵀ
    Embedding:  W0 [vocab, d]  A [r, vocab]  B [d, r]         W = W0 + s·(B·A)ᵀ

Adapters other than plain LoRA (DoRA, IA3, LoHa, prompt tuning, layer replication, trainable tokens, LoRA on
raw parameters) are refused with `UnsupportedAdapterError`; an adapter whose modules or shapes do not fit the base
is a `CorruptCheckpointError` (usually: the wrong base).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.errors import CorruptCheckpointError, UnsupportedAdapterError
from hubguard.weights.tensors import TensorInfo, TensorSource

if TYPE_CHECKING:
    import torch

PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|"
                       r"lora_embedding_B|lora_magnitude_vector)$")
_REGEX_CHARS = set("^$*+?()[]{}|\\")
# adapter_config.json fields that change the model beyond W0 + s·B·A (their presence, non-empty, is refused)
_UNSUPPORTED = {"use_dora": "DoRA", "layer_replication": "layer replication", "target_parameters": "LoRA on raw "
                "parameters", "trainable_token_indices": "trainable tokens", "use_qalora": "QA-LoRA",
                "use_bdlora": "block-diagonal LoRA", "alora_invocation_tokens": "activated LoRA"}


@dataclass(frozen=True)
class LoraConfig:
    """What base ⊕ adapter needs from adapter_config.json, validated."""

    r: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]

    def scale(self, module: str, rank: int) -> float:
        alpha = next((v for k, v in self.alpha_pattern.items() if _matches(k, module)), self.alpha)
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank

    def rank(self, module: str) -> int:
        return next((v for k, v in self.rank_pattern.items() if _matches(k, module)), self.r)


def _matches(pattern: str, module: str) -> bool:
    """PEFT's pattern keys name a module by its dotted suffix (`re.match(rf"(.*\\.)?({key})$")`); hubguard matches
    them literally (a regular expression from an uploader could take forever to match), refusing regex keys."""
    return module == pattern or module.endswith("." + pattern)


def _number(value: Any, *, what: str, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not 0 < value < 1e9:
        raise CorruptCheckpointError(f"adapter_config.json: {what} is {str(value)[:40]!r}; it must be a positive "
                                     f"{'integer' if integer else 'number'}. Re-save the adapter with peft.")
    return value


def parse_lora_config(config: dict[str, Any], *, where: str) -> LoraConfig:
    """The LoRA settings of an adapter_config.json; other adapter kinds are refused (UnsupportedAdapterError)."""
    kind = config.get("peft_type")
    if not isinstance(kind, str) or kind.upper() != "LORA":
        raise UnsupportedAdapterError(f"'{where}' is a {str(kind)[:40]!r} adapter; hubguard combines only LoRA adapters "
                                      "(peft_type LORA) with their base.")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise UnsupportedAdapterError(f"'{where}' uses {what} ({key}); base ⊕ adapter is then not W0 + s·B·A, which is "
                                          "all hubguard computes.")
    patterns: dict[str, dict[str, Any]] = {}
    for key in ("rank_pattern", "alpha_pattern"):
        value = config.get(key) or {}
        if not isinstance(value, dict):
            raise CorruptCheckpointError(f"'{where}': {key} must be an object (module name -> value).")
        bad = [k for k in value if _REGEX_CHARS & set(k)]
        if bad:
            raise UnsupportedAdapterError(f"'{where}': the {key} key {bad[0][:80]!r} is a regular expression; hubguard "
                                          "matches module names literally.",
                                          fix=f"Write the {key} keys as module names (e.g. 'layers.0.self_attn.q_proj'), "
                                              "or merge the adapter and check the merged model.")
        patterns[key] = {k: _number(v, what=f"{key}['{k[:60]}']", integer=key == "rank_pattern") for k, v in value.items()}
    return LoraConfig(
        r=_number(config.get("r"), what="r", integer=True), alpha=float(_number(config.get("lora_alpha"), what="lora_alpha")),
        rslora=config.get("use_rslora") is True, fan_in_fan_out=config.get("fan_in_fan_out") is True,
        rank_pattern=patterns["rank_pattern"], alpha_pattern=patterns["alpha_pattern"],
    )


@dataclass(frozen=True)
class _Delta:
    a: str  # adapter tensor names
    b: str
    scale: float
    embedding: bool
    transpose: bool  # the base stores this weight [in, out] (Conv1D, fan_in_fan_out)


def base_tensor_name(want: str, base_names: set[str], *, where: str) -> str:
    """The base tensor `want` means: the exact name, else the one name that ends with it (or that it ends with),
    e.g. an adapter trained on LlamaForCausalLM ("model.layers.0...") on a LlamaModel save ("layers.0...")."""
    if want in base_names:
        return want
    hits = [n for n in base_names if n.endswith("." + want) or want.endswith("." + n)]
    if len(hits) == 1:
        return hits[0]
    raise CorruptCheckpointError(
        f"'{where}' changes '{want}', which the base model " + ("has several of" if hits else "does not have")
        + f" ({', '.join(sorted(hits)[:3]) or 'no such tensor'}). The adapter was trained on another base: pass the "
        "right one with --base (base=...)."
    )


class LoraOverlay(TensorSource):
    """base ⊕ adapter as a tensor source (see the module docstring)."""

    def __init__(self, *, base: TensorSource, adapter: TensorSource, config: LoraConfig, where: str) -> None:
        self.base = base
        self.adapter = adapter
        self.name = f"{base.name} + {where}"
        self.metadata = dict(base.metadata)
        self._names = set(base.names())
        self._deltas: dict[str, _Delta] = {}
        self._bias: dict[str, tuple[str, str]] = {}  # base bias -> (lora_B bias, the weight's name for the scale)
        self._replaced: dict[str, str] = {}  # base tensor -> adapter tensor saved whole
        self._cache: dict[str, torch.Tensor] = {}
        parts: dict[str, dict[str, str]] = {}
        for key in adapter.names():
            k = key.removeprefix(PEFT_PREFIX)
            m = _LORA_KEY.match(k)
            if m is None:
                target = base_tensor_name(k.replace(".base_layer.", "."), self._names, where=where)
                self._check_shape(target, key, self.adapter.info(key).shape)
                self._replaced[target] = key
            else:
                parts.setdefault(m.group("module"), {})[m.group("part")] = key
        for module, got in parts.items():
            self._add_module(module, got, config=config, where=where)

    def _check_shape(self, target: str, key: str, shape: tuple[int, ...]) -> None:
        if tuple(self.base.info(target).shape) != tuple(shape):
            raise CorruptCheckpointError(f"The adapter's '{key}' is {list(shape)} but the base's '{target}' is "
                                         f"{list(self.base.info(target).shape)}: the adapter does not fit this base. "
                                         "Pass the right base with --base (base=...).")

    def _add_module(self, module: str, got: dict[str, str], *, config: LoraConfig, where: str) -> None:
        if "lora_magnitude_vector" in got:
            raise UnsupportedAdapterError(f"'{where}' is a DoRA adapter (lora_magnitude_vector); hubguard computes only "
                                          "W0 + s·B·A.")
        embedding = "lora_embedding_A" in got
        a, b = (got.get("lora_embedding_A"), got.get("lora_embedding_B")) if embedding else (got.get("lora_A.weight"),
                                                                                               got.get("lora_B.weight"))
        if a is None or b is None:
            raise CorruptCheckpointError(f"'{where}': module '{module}' has only one of lora_A / lora_B. Re-save the adapter.")
        target = base_tensor_name(module + ".weight", self._names, where=where)
        (ra, n_in), (n_out, rb) = self._matrix(a), self._matrix(b)
        base_shape = tuple(self.base.info(target).shape)
        transpose = embedding or config.fan_in_fan_out
        want = (n_in, n_out) if transpose else (n_out, n_in)
        if ra != rb or ra != config.rank(module) or base_shape != want:
            raise CorruptCheckpointError(
                f"'{where}': module '{module}' has lora_A {[ra, n_in]} and lora_B {[n_out, rb]} (rank "
                f"{config.rank(module)} in adapter_config.json) but the base's '{target}' is {list(base_shape)}: the "
                "adapter does not fit this base. Pass the right base with --base (base=...), or re-save the adapter."
            )
        self._deltas[target] = _Delta(a=a, b=b, scale=config.scale(module, ra), embedding=embedding, transpose=transpose)
        if "lora_B.bias" in got:
            bias = base_tensor_name(module + ".bias", self._names, where=where)
            self._bias[bias] = (got["lora_B.bias"], target)

    def _matrix(self, name: str) -> tuple[int, int]:
        shape = self.adapter.info(name).shape
        if len(shape) != 2:
            raise CorruptCheckpointError(f"The adapter's '{name}' should be a matrix but has shape {list(shape)}.")
        return int(shape[0]), int(shape[1])

    def _adapter_tensor(self, name: str) -> "torch.Tensor":
        if name not in self._cache:
            self._cache[name] = self.adapter.get(name)
        return self._cache[name]

    # -- TensorSource --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self.base.names()

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def info(self, name: str) -> TensorInfo:
        if name not in self._names:
            raise self.missing(name)
        return self.base.info(name)

    def total_bytes(self) -> int:
        return self.base.total_bytes()

    def _read_many(self, names: list[str]) -> "dict[str, torch.Tensor]":
        from_base = [n for n in names if n not in self._replaced]
        read = self.base.get_many(from_base) if from_base else {}
        out: dict[str, torch.Tensor] = {}
        for n in names:
            w = self._adapter_tensor(self._replaced[n]) if n in self._replaced else read[n]
            d = self._deltas.get(n)
            if d is not None:
                ba = self._adapter_tensor(d.b) @ self._adapter_tensor(d.a)  # [out, r] @ [r, in]
                w = w + d.scale * (ba.t() if d.transpose else ba)
            if n in self._bias:
                lora_bias, weight = self._bias[n]
                w = w + self._deltas[weight].scale * self._adapter_tensor(lora_bias)
            out[n] = w
        return out

    def _read_rows(self, name: str, rows: list[int], *, max_gap: int) -> "list[tuple[list[int], torch.Tensor]]":
        if name in self._replaced:
            block = self._adapter_tensor(self._replaced[name])[rows]
        else:
            block = self.base.get_rows(name, rows, max_gap=max_gap)
        d = self._deltas.get(name)
        if d is not None:
            a, b = self._adapter_tensor(d.a), self._adapter_tensor(d.b)
            # rows of B·A are B[rows]·A; rows of (B·A)ᵀ are (A[:, rows])ᵀ·Bᵀ
            block = block + d.scale * ((a[:, rows].t() @ b.t()) if d.transpose else (b[rows] @ a))
        return [(rows, block)]
