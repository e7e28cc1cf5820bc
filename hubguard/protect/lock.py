"""Scale lock: a function-preserving re-parametrisation of a released update that breaks when it is re-scaled.

hubguard's addition to Trap² (not in the paper; a symmetry lock like MergeLock / PaRaMS, see ANCHORS §3).
Attention only sees the products Wqᵀ·Wk (per head) and Wo·Wv. For an invertible map G on a head's space,
(G·Wq, G⁻ᵀ·Wk) and (G·Wv, Wo·G⁻¹) compute exactly the same function. With G = I + (g - 1)·u·uᵀ (scale a unit
direction u by g; G⁻¹ scales it by 1/g) the released weights W₀ + ΔW become

    Wq' = Wq + (g - 1)·P·Wq     Wk' = Wk + (1/g - 1)·P·Wk     (P = Σ_heads u·uᵀ, the lock directions)
    Wv' = Wv + (g - 1)·P·Wv     Wo' = Wo + (1/g - 1)·Wo·P

so the update shipped is ΔW' = W' - W₀: identical outputs at s = 1 (the standalone model is unchanged), but a
merge applies W₀ + s·ΔW' and the two sides no longer cancel: along u the attention logits / head outputs are
multiplied by f(s) = (1 + s(g - 1))·(1 + s(1/g - 1)) = 1 + ((g - 1)²/g)·s·(1 - s)  (g = 100: f(0.5) ≈ 25,
f(0.9) ≈ 9.8, f(1.5) ≈ -73). Other updates merged at s = 1 are also amplified g times along u. It costs one calibration pass.

- u, per key/value head: the top eigenvector(s) of the second moment of the head's outputs on calibration inputs
  (data-free: of W·Wᵀ), projected off the projection's bias so that G·b = b (LoRA cannot change biases).
- Rotary (RoPE) attention: G must commute with the position rotations, so the lock scales whole rotary planes
  (dimensions i and i + D/2, the `"rotary": "half"` layout of the architecture map) instead of directions.
- GQA: one G per key/value head, applied to every query head of its group (and to their columns of Wo).
- As LoRA: the lock adds rank (directions x query heads) per module: B' = [B, coef·U], A' = [A, Uᵀ·W] for
  q/k/v and B' = [B, coef·W·U], A' = [A, Uᵀ] for o (`hubguard.protect.lock_adapter`).

Known weakness (measured by benchmarks/protect.py; the attack is `hubguard.protect.realign`): an attacker who knows the base and
suspects a lock can fit G per head by least squares and undo it exactly; it is a lock against merge tools, not a
secret. Lowering precision also erodes it: the 1/g side is a cancellation, so keep the update in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hubguard.errors import ProtectionError, UnsupportedArchitectureError
from hubguard.protect.realign import attention_names, realign_state_dict
from hubguard.utils import get_logger
from hubguard.weights.binding import BoundArchitecture, bind_architecture

logger = get_logger(__name__)

LOCK_SCHEMA_VERSION = 1
PAIRS = ("qk", "vo")


@dataclass(frozen=True)
class LockConfig:
    """How strongly and where to lock. `gain` g: lock directions are scaled by g on one side, 1/g on the other."""

    gain: float = 100.0
    directions: int = 1  # per key/value head (rotary: planes per head)
    pairs: tuple[str, ...] = PAIRS
    max_tokens: int = 4096  # calibration tokens used per module
    # Layers to lock (indices of the architecture map); None = every layer. An update confined to some layers (e.g.
    # LoRA with layers_to_transform) can be locked on those alone, leaving the other layers the base's, bit for bit.
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.gain) or abs(self.gain) < 2.0:
            raise ProtectionError(f"LockConfig.gain must be a finite number with |gain| >= 2 (got {self.gain}); "
                                  "100 is the default, larger locks harder but loses more precision.")
        if self.directions < 1:
            raise ProtectionError(f"LockConfig.directions must be >= 1 (got {self.directions}).")
        if not self.pairs or set(self.pairs) - set(PAIRS):
            raise ProtectionError(f"LockConfig.pairs must be a non-empty subset of {PAIRS} (got {self.pairs}).")
        if self.max_tokens < 1:
            raise ProtectionError(f"LockConfig.max_tokens must be >= 1 (got {self.max_tokens}).")
        if self.layers is not None and (not self.layers or any(int(i) != i or i < 0 for i in self.layers)):
            raise ProtectionError(f"LockConfig.layers must be None (every layer) or non-empty layer indices >= 0 "
                                  f"(got {self.layers}).")

    def to_dict(self) -> dict[str, Any]:
        layers = list(self.layers) if self.layers is not None else None
        return {"schema_version": LOCK_SCHEMA_VERSION, **asdict(self), "pairs": list(self.pairs), "layers": layers}


@dataclass(frozen=True)
class LockEntry:
    """The lock on one weight: ΔW = coef·U·(Uᵀ·W) (side "out": rows) or coef·(W·U)·Uᵀ (side "in": columns)."""

    name: str  # tensor name, e.g. "encoder.layer.0.attention.self.query.weight"
    side: str  # "out" or "in"
    basis: torch.Tensor  # (dim, m) orthonormal columns in the locked space
    coef: float

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        u = self.basis.to(weight.dtype)
        if self.side == "out":  # (out, m) @ (m, in)
            return self.coef * u @ (u.T @ weight)
        return self.coef * (weight @ u) @ u.T  # (out, m) @ (m, in)

    def bias_delta(self, bias: torch.Tensor) -> torch.Tensor:
        """What G does to an out-side projection's bias: coef·U·Uᵀ·b (zero when U ⊥ b, as for LoRA locks)."""
        u = self.basis.to(bias.dtype)
        return self.coef * u @ (u.T @ bias)

    def lora_factors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B @ A = delta(weight): B (out, m), A (m, in)."""
        u = self.basis.to(weight.dtype)
        if self.side == "out":
            return self.coef * u, u.T @ weight
        return self.coef * (weight @ u), u.T.contiguous()


@dataclass(frozen=True)
class LockPlan:
    """Every locked weight of a model; `record()` is what the model card stores."""

    config: LockConfig
    family: str
    entries: tuple[LockEntry, ...]
    calibrated: bool
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rank(self) -> dict[str, int]:
        return {e.name: int(e.basis.shape[1]) for e in self.entries}

    def record(self) -> dict[str, Any]:
        ranks = sorted(set(self.rank.values()))
        return {**self.config.to_dict(), "family": self.family, "locked_weights": len(self.entries),
                "rank_added": ranks, "calibrated": self.calibrated, "skipped": list(self.skipped)}


def bind_model(model: torch.nn.Module) -> BoundArchitecture:
    """The architecture map of a plain transformers model (not PEFT-wrapped)."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    bound = bind_architecture(config=config, tensor_names=list(model.state_dict()), source=type(model).__name__)
    if bound.spec.attention.fused or bound.spec.attention.kind != "standard":
        raise UnsupportedArchitectureError(
            f"The scale lock needs separate q/k/v projections; the '{bound.family}' family fuses them into one "
            "weight (or, with latent attention, into low-rank paths). Use Trap² (hubguard protect) for this model, or "
            "add per-projection names to its architecture map."
        )
    return bound


class _Moments:
    """Per-head second moments (heads, D, D) of each hooked projection's output, bias excluded."""

    def __init__(self, model: torch.nn.Module, heads: Mapping[str, int], max_tokens: int):
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.mask: torch.Tensor | None = None
        self.handles = []
        modules = dict(model.named_modules())
        for name in heads:
            module = modules.get(name.removesuffix(".weight"))
            if module is None:
                raise ProtectionError(f"No module owns the weight {name}; pass the plain model (not a PEFT wrapper).")
            self.handles.append(module.register_forward_hook(self._hook(name, heads[name], max_tokens)))

    def _hook(self, name: str, heads: int, max_tokens: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            if self.tokens.get(name, 0) >= max_tokens:
                return
            x = args[0].detach()
            if self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape:
                x = x[self.mask]
            x = x.reshape(-1, x.shape[-1]).float()[: max_tokens - self.tokens.get(name, 0)]
            if not len(x):  # an empty batch (or all padding): nothing to add
                return
            y = (x @ module.weight.detach().float().T).reshape(len(x), heads, -1)  # (n, heads, D)
            m = torch.einsum("nhd,nhe->hde", y, y)
            self.sums[name] = self.sums.get(name, 0) + m
            self.tokens[name] = self.tokens.get(name, 0) + len(x)

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _weight_moments(weight: torch.Tensor, heads: int) -> torch.Tensor:
    w = weight.detach().float().reshape(heads, -1, weight.shape[-1])  # (heads, D, in)
    return w @ w.transpose(1, 2)


def _top_basis(moment: torch.Tensor, *, k: int, avoid: list[torch.Tensor], rotary: bool) -> torch.Tensor | None:
    """(D, m) orthonormal lock basis of one head space: top-k directions (or rotary planes) off the `avoid` vectors."""
    d = moment.shape[0]
    if rotary:
        half = d // 2
        if any(bool(b.any()) for b in avoid):
            return None  # a plane cannot be made orthogonal to a bias; the caller skips this pair
        energy = moment.diagonal()[:half] + moment.diagonal()[half:]
        planes = torch.topk(energy, min(k, half)).indices.sort().values
        basis = torch.zeros(d, 2 * len(planes))
        for j, i in enumerate(planes.tolist()):
            basis[i, 2 * j] = basis[i + half, 2 * j + 1] = 1.0
        return basis
    proj = torch.eye(d)
    kept = [b / b.norm() for b in avoid if float(b.norm()) > 0]
    if kept:
        q, _ = torch.linalg.qr(torch.stack(kept, 1))
        proj = proj - q @ q.T
    m = proj @ moment @ proj
    _, vecs = torch.linalg.eigh((m + m.T) / 2)
    basis = proj @ vecs[:, -k:].flip(1)
    q, _ = torch.linalg.qr(basis)
    return q


def _block(basis: torch.Tensor, *, heads: list[int], d: int, total: int) -> torch.Tensor:
    """Place one head-space basis (D, m) at each of `heads` in a (total·D, len(heads)·m) block-diagonal basis."""
    out = torch.zeros(total * d, len(heads) * basis.shape[1])
    for j, h in enumerate(heads):
        out[h * d : (h + 1) * d, j * basis.shape[1] : (j + 1) * basis.shape[1]] = basis
    return out


@torch.no_grad()
def plan_lock(
    model: torch.nn.Module, *, config: LockConfig | None = None, calibration: Iterable[Mapping[str, Any]] | None = None,
    for_lora: bool = True,
) -> LockPlan:
    """Choose the lock of a plain model that already holds the update (W₀ + ΔW).

    `calibration`: a few input batches (dicts for `model(**batch)`; labels are dropped) whose activations choose
    the lock directions; None chooses them from the weights alone. `for_lora`: the lock must leave biases alone.
    """
    config = config or LockConfig()
    bound = bind_model(model)
    state = model.state_dict()
    names = set(state)
    h, kv, d = bound.num_heads, bound.num_kv_heads, bound.head_dim
    group = h // kv
    rotary = bound.spec.attention.rotary == "half"
    chosen = range(bound.num_layers) if config.layers is None else sorted(set(config.layers))
    if chosen and max(chosen) >= bound.num_layers:
        raise ProtectionError(f"LockConfig.layers {config.layers} names a layer the model lacks: it has "
                              f"{bound.num_layers} layers (0-{bound.num_layers - 1}).")
    layers = {i: attention_names(bound, i, names) for i in chosen}
    heads_of = {}
    for lay in layers.values():
        heads_of.update({lay["q"]: h, lay["k"]: kv, lay["v"]: kv})
    moments = {} if calibration is None else _calibration_moments(model, heads_of, calibration, config.max_tokens)
    entries: list[LockEntry] = []
    skipped: list[str] = []
    g = float(config.gain)
    for i, lay in layers.items():
        mom = {r: moments[lay[r]] if lay[r] in moments else _weight_moments(state[lay[r]], heads_of[lay[r]])
               for r in ("q", "k", "v")}
        bias = {r: state.get(lay[r].removesuffix("weight") + "bias") for r in ("q", "k", "v")}
        for pair in config.pairs:
            bases_kv, bases_q = [], []
            for j in range(kv):
                qs = list(range(j * group, (j + 1) * group))
                if pair == "qk":
                    mq = sum(mom["q"][a] / mom["q"][a].trace().clamp(min=1e-12) for a in qs)
                    moment = mq + mom["k"][j] / mom["k"][j].trace().clamp(min=1e-12)
                    avoid = [bias["q"][a * d : (a + 1) * d] for a in qs] if bias["q"] is not None else []
                    if rotary and bias["k"] is not None:
                        avoid.append(bias["k"][j * d : (j + 1) * d])
                else:
                    moment = mom["v"][j]
                    avoid = [bias["v"][j * d : (j + 1) * d]] if bias["v"] is not None else []
                basis = _top_basis(moment, k=config.directions, avoid=avoid if for_lora or not rotary else [],
                                   rotary=rotary and pair == "qk")
                if basis is None:
                    break
                bases_kv.append((j, basis))
                bases_q += [(a, basis) for a in qs]
            if len(bases_kv) < kv:
                skipped.append(f"layer {i} {pair}: rotary planes cannot avoid the q/k bias a LoRA update cannot change")
                continue
            kv_basis = torch.cat([_block(b, heads=[j], d=d, total=kv) for j, b in bases_kv], 1)
            q_basis = torch.cat([_block(b, heads=[a], d=d, total=h) for a, b in bases_q], 1)
            if pair == "qk":
                entries += [LockEntry(lay["q"], "out", q_basis, g - 1.0), LockEntry(lay["k"], "out", kv_basis, 1.0 / g - 1.0)]
            else:
                entries += [LockEntry(lay["v"], "out", kv_basis, g - 1.0), LockEntry(lay["o"], "in", q_basis, 1.0 / g - 1.0)]
    if skipped:
        logger.warning("Scale lock skipped %d pair(s): %s", len(skipped), skipped[0])
    if not entries:
        raise ProtectionError("Nothing could be locked: " + "; ".join(skipped[:3]) + ". Use the full fine-tuning mode "
                              "(biases can change there) or lock only pairs=('vo',).")
    return LockPlan(config=config, family=bound.family, entries=tuple(entries), calibrated=calibration is not None,
                    skipped=tuple(skipped))


def _calibration_moments(model: torch.nn.Module, heads_of: dict[str, int], calibration: Iterable[Mapping[str, Any]],
                         max_tokens: int) -> dict[str, torch.Tensor]:
    """Per attention projection (name -> its head count), the input second moments over the calibration
    batches (up to `max_tokens` tokens each), from forward hooks; the model's train/eval mode is restored."""
    hooks = _Moments(model, heads_of, max_tokens)
    was_training = model.training
    model.eval()
    try:
        for batch in calibration:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            if any(isinstance(v, torch.Tensor) and v.dim() and not len(v) for v in inputs.values()):
                continue  # an empty batch (a split shorter than the batches asked for): the model cannot run it
            mask = inputs.get("attention_mask")
            hooks.mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            model(**inputs)
            if min(hooks.tokens.values(), default=0) >= max_tokens:
                break
    finally:
        hooks.close()
        model.train(was_training)
    if len(hooks.sums) < len(heads_of):
        raise ProtectionError("The calibration batches reached no attention projection; pass input batches "
                              "the model accepts (e.g. input_ids and attention_mask), or none for a data-free lock.")
    return hooks.sums


@torch.no_grad()
def apply_lock(model: torch.nn.Module, plan: LockPlan) -> None:
    """Lock a full model in place (full fine-tuning releases): W ← W + ΔW_lock; out-side biases follow G."""
    params = dict(model.named_parameters())
    for name, value in lock_state_dict({n: p.detach() for n, p in params.items()}, plan).items():
        if value is not params[name]:
            params[name].copy_(value)


def lock_state_dict(weights: Mapping[str, torch.Tensor], plan: LockPlan) -> dict[str, torch.Tensor]:
    """A locked copy of a state dict (tensors not in the plan are shared, not copied)."""
    out = dict(weights)
    for e in plan.entries:
        out[e.name] = weights[e.name] + e.delta(weights[e.name].float()).to(weights[e.name].dtype)
        bias = e.name.removesuffix("weight") + "bias"
        if e.side == "out" and bias in weights:
            out[bias] = weights[bias] + e.bias_delta(weights[bias].float()).to(weights[bias].dtype)
    return out


def lock_scale_factor(s: float, *, gain: float) -> float:
    """f(s): what a locked direction's contribution is multiplied by when the update is scaled by s."""
    return (1 + s * (gain - 1)) * (1 + s * (1 / gain - 1))


__all__ = ["LOCK_SCHEMA_VERSION", "LockConfig", "LockEntry", "LockPlan", "apply_lock", "bind_model",
           "lock_scale_factor", "lock_state_dict", "plan_lock", "realign_state_dict"]
