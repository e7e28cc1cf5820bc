"""hubguard's additions to the Trap² objective (not in the paper), each switched on by a `ProtectConfig` field.

- `distill` (keep the released behaviour): the standalone term also pays distill · KL(p_start ‖ p) at s = 1, the
  divergence from the outputs of the update the run started from (its trainable tensors, snapshotted), so the
  protected update keeps the predictions of the unprotected one, not only its accuracy. The starting update is
  fixed, so its outputs are a function of the batch alone: `TeacherOutputs` computes them once per distinct batch
  (eval mode: no dropout, the usual distillation teacher) and serves the epochs after the first from memory.
- `refit_steps` (a trap that survives a re-fine-tune): an attacker who fine-tunes the released update before
  merging moves it by δ along the plain loss's gradient. Every `refit_every` steps the trainer simulates that
  attacker: `refit_steps` sign-gradient steps of size `refit_lr` on the plain loss, from the current update, on
  the effective weights (LoRA: the adapted layers' full weights, as a full-weight re-fine-tune moves them). The
  trap term is then evaluated at W₀ + s·(ΔW + δ) (first order: δ is held fixed), so what is trained to break is
  the re-fine-tuned update's merge.
- `interference` (a trap for the protected update kept at coefficient 1): another update merged in perturbs the
  released weights; each step adds a random low-rank perturbation E to every adapted weight, with
  ‖E‖ = interference · ‖ΔW‖ of that weight, and maximises L(W₀ + ΔW + E) too (weight `interference_weight`).
- `proxy_mix` (a trap for the merge at coefficient 1, from real task updates): random perturbations lie in flat
  directions, other tasks' updates need not. The protector trains its own updates P_j of other, public tasks from the
  same base (never the attacker's), and with probability `proxy_mix` a step's trap pass is the merge
  W₀ + s·(ΔW + Σ_j c_j·P_j), c_j ~ U[proxy_scale], s ~ U[scale_min, 1] (s = 1 included).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError

if TYPE_CHECKING:
    import torch

    from hubguard.protect.config import ProtectConfig

    LossFn = Any


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers of `model` by module name (those with a trainable default adapter)."""
    return {n: m for n, m in model.named_modules()
            if hasattr(m, "base_layer") and "default" in getattr(m, "lora_A", {}) and hasattr(m, "get_delta_weight")}


def base_weight_names(model: torch.nn.Module) -> list[str]:
    """Parameter names of the frozen base weights under LoRA layers (`<module>.base_layer.weight`)."""
    return [f"{n}.base_layer.weight" for n in lora_modules(model)]


def _logits(out: Any) -> torch.Tensor:
    """The logits of a model output (an object or a mapping with `logits`; a bare tensor is taken as them)."""
    import torch

    got = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if got is None and isinstance(out, Mapping):
        got = out.get("logits")
    if got is None:
        raise ProtectionError("ProtectConfig.distill needs model outputs with logits; set distill=0 for this model.")
    return got.float()


def distill_kl(teacher: Any, student: Any) -> torch.Tensor:
    """Mean KL(p_teacher ‖ p_student) over the examples (or tokens) of two model outputs with logits (or the
    logits themselves)."""
    import torch

    t, s = _logits(teacher), _logits(student)
    log_p, log_q = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


# What `TeacherOutputs` keeps in memory at most (the cached logits; beyond it, outputs are recomputed every step).
TEACHER_CACHE_BYTES = 512 * 2**20


def batch_digest(inputs: Any) -> bytes:
    """A digest of a batch's contents (tensors by dtype, shape and bytes; other values by repr), as a cache key."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=20)

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            h.update(memoryview(flat.view(torch.uint8).numpy()))
        elif isinstance(value, Mapping):
            h.update(b"M%d" % len(value))
            for key in sorted(value, key=repr):
                h.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(b"L%d" % len(value))
            for item in value:
                feed(item)
        else:
            h.update(b"V" + repr(value).encode())

    feed(inputs)
    return h.digest()


class TeacherOutputs:
    """The starting update's outputs on a batch, for `distill` and `lam_control`: its logits and its loss.

    `teacher` holds the starting update's trainable tensors (they replace the model's in a functional call). The
    pass runs in eval mode (no dropout), so the outputs depend on the batch only and are kept by `batch_digest`
    until `budget_bytes` of logits are held; a training set seen for several epochs pays one teacher forward per
    batch instead of one per step.
    """

    def __init__(self, model: torch.nn.Module, teacher: Mapping[str, torch.Tensor], *, loss_fn: LossFn,
                 budget_bytes: int = TEACHER_CACHE_BYTES) -> None:
        self.model, self.teacher, self.loss_fn, self.budget = model, dict(teacher), loss_fn, budget_bytes
        self._kept: dict[bytes, tuple[torch.Tensor, float]] = {}
        self._bytes = 0
        self.hits = self.misses = 0

    def __call__(self, inputs: Any) -> tuple[torch.Tensor, float]:
        """(logits, mean loss) of the starting update on `inputs`."""
        import torch

        from hubguard.protect.forward import call, mean_loss

        key = batch_digest(inputs)
        if key in self._kept:
            self.hits += 1
            return self._kept[key]
        self.misses += 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = call(self.model, inputs, self.teacher)
                got = (_logits(out).detach(), float(mean_loss(self.loss_fn(out, inputs))))
        finally:
            self.model.train(was_training)
        size = got[0].numel() * got[0].element_size()
        if self._bytes + size <= self.budget:
            self._kept[key] = got
            self._bytes += size
        return got


def refit_shift(
    model: torch.nn.Module, batches: Iterable[Any], *, config: ProtectConfig, loss_fn: LossFn,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """δ of a simulated re-fine-tune: sign-gradient steps of the plain loss from the current update, one per batch.

    LoRA: δ lives on the base weights under the LoRA layers (a full-weight fine-tune of the adapted layers);
    full: on the trainable parameters. Returns {parameter name: δ} (detached).
    """
    import torch

    from hubguard.protect.forward import call, mean_loss

    params = dict(model.named_parameters())
    names = base_weight_names(model) if config.mode == "lora" else [n for n, p in params.items() if p.requires_grad]
    if not names:
        raise ProtectionError("refit_steps needs LoRA layers (mode='lora') or trainable parameters (mode='full').")
    delta = {n: torch.zeros_like(params[n]) for n in names}
    for batch in batches:
        leaves = {n: d.clone().requires_grad_(True) for n, d in delta.items()}
        overrides = {n: params[n].detach() + leaves[n] for n in names}
        loss = mean_loss(loss_fn(call(model, batch, overrides), batch))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                delta[n] = delta[n] - config.refit_lr * g.sign()
    return delta


def check_proxies(model: torch.nn.Module, proxies: Iterable[Mapping[str, torch.Tensor]], *,
                  config: ProtectConfig) -> list[dict[str, torch.Tensor]]:
    """The proxy updates of `config.proxy_mix`, checked against `model`: each maps parameter names to ΔW tensors of
    their shape (LoRA: the base weights under the LoRA layers, `<module>.base_layer.weight`; full: trainable
    parameters). Raises ProtectionError naming what to fix."""
    params = dict(model.named_parameters())
    names = set(base_weight_names(model)) if config.mode == "lora" else {n for n, p in params.items() if p.requires_grad}
    out = [dict(p) for p in proxies]
    if config.proxy_mix > 0 and not any(out):
        raise ProtectionError("proxy_mix > 0 needs proxy updates: pass train_protected(proxies=[{name: ΔW}, ...]), "
                              "updates of other public tasks from the same base, or set proxy_mix=0.")
    if out and not (config.proxy_mix > 0 or config.regmean_mix > 0):
        raise ProtectionError("proxies were given but proxy_mix and regmean_mix are 0, so they would not be used; set "
                              "proxy_mix > 0 (or regmean_mix > 0).")
    for j, proxy in enumerate(out):
        for n, d in proxy.items():
            if n not in names:
                where = "a base weight under a LoRA layer" if config.mode == "lora" else "a trainable parameter"
                raise ProtectionError(f"Proxy update {j} names {n!r}, which is not {where} of the model; key proxies "
                                      f"by the model's parameter names (e.g. {sorted(names)[:1]}).")
            if tuple(d.shape) != tuple(params[n].shape):
                raise ProtectionError(f"Proxy update {j}'s {n!r} has shape {tuple(d.shape)}, the parameter "
                                      f"{tuple(params[n].shape)}; give ΔW of the same shape.")
    return [{n: d.detach().to(params[n].dtype) for n, d in proxy.items()} for proxy in out]


def proxy_shift(proxies: list[dict[str, torch.Tensor]], *, config: ProtectConfig,
                generator: torch.Generator) -> dict[str, torch.Tensor] | None:
    """This step's Σ_j c_j·P_j, c_j ~ U[proxy_scale], with probability `config.proxy_mix`; else None (a plain
    Trap² pass). `config.proxy_draw` "one": a single proxy drawn uniformly instead of all of them. Draws nothing when there are no proxies, so runs without them keep their random sequence."""
    import torch

    if not proxies or not config.proxy_mix > 0:
        return None
    if float(torch.rand((), generator=generator)) >= config.proxy_mix:
        return None
    lo, hi = config.proxy_scale
    if config.proxy_draw == "one":
        proxies = [proxies[int(torch.randint(len(proxies), (), generator=generator))]]
    return weighted_sum((lo + float(torch.rand((), generator=generator)) * (hi - lo), p) for p in proxies)


def weighted_sum(terms: Iterable[tuple[float, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Σ c·Δ over (c, {name: Δ}) terms, name by name (a name missing from a term counts as zero there)."""
    out: dict[str, torch.Tensor] = {}
    for c, delta in terms:
        for n, d in delta.items():
            out[n] = out[n] + c * d if n in out else c * d
    return out


@contextmanager
def shifted_in_place(model: torch.nn.Module, *, shift: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily add `shift`'s tensors to the model's parameters of those names (inference only), e.g. the merge
    W0 + ΔW + Σ_j P_j of checked proxies; restored on exit."""
    import torch

    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in shift}
    try:
        with torch.no_grad():
            for n, d in shift.items():
                params[n].add_(d)
        yield
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


def interference_parameters(
    model: torch.nn.Module, *, config: ProtectConfig, generator: torch.Generator,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Overrides for W₀ + ΔW + E: a random rank-`lora_r` perturbation E of each adapted weight, ‖E‖ = interference ·
    ‖ΔW‖ (LoRA: of the layer's B·A; full: of θ − θ₀ for each matrix). Differentiable in the update."""
    import torch

    def noise(shape: torch.Size, norm: torch.Tensor) -> torch.Tensor:
        r = min(config.lora_r, *shape)
        g = torch.randn(shape[0], r, generator=generator) @ torch.randn(r, shape[1], generator=generator)
        return (config.interference * norm / g.norm().clamp(min=1e-12)) * g

    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    if config.mode == "lora":
        for name, module in lora_modules(model).items():
            key = f"{name}.base_layer.weight"
            delta = module.get_delta_weight("default").detach()
            out[key] = params[key] + noise(params[key].shape, delta.norm()).to(params[key].dtype)
        return out
    if reference is None:
        raise ProtectionError("interference in full mode needs the base weights (reference=...).")
    for n, ref in reference.items():
        p = params[n]
        if p.dim() == 2:
            out[n] = p + noise(p.shape, (p.detach() - ref).norm()).to(p.dtype)
    return out
