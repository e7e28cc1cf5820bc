"""Output-preserving attacks for every family with an architecture map: a name -> implementation registry.

Each attack changes a checkpoint's tensors (its safetensors state dict) using only what the family's map says
about them (`attacks_roles.describe`), so one implementation serves every family; whether an attack applies
is decided from the map too (a hidden rotation needs norms that commute with it, ...). `attack_folder` writes
an attacked copy of a model folder that transformers loads as usual — tests check its logits are unchanged.

    permute_hidden     hidden dimensions permuted everywhere
    rotate_hidden      norm gains folded, then a random orthogonal map of the hidden space
    rescale_norms      every foldable norm's gains (γ/s, W·s) and the query/key-norm gains (tied on rotary planes)
    permute_heads      key/value groups with their query heads, and the query heads inside a group
    per_head_maps      per-head invertible maps on V/O, and on Q/K where rotary and the q/k norm allow
    permute_ffn_units  FFN hidden units (every expert and shared expert too)
    scale_ffn_units    gated-FFN units rescaled with sign (up·c, down/c)
    permute_experts    routed experts with the router rows (within expert groups)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubguard.errors import HubguardError
from hubguard.redteam import attacks_hidden, attacks_units
from hubguard.redteam.attacks_roles import WeightRoles, describe
from hubguard.weights.binding import bind_architecture

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SpecAttack:
    name: str
    apply: Callable[..., None]  # (tensors, roles, *, generator) -> None, in place
    applies: Callable[[WeightRoles], bool]
    what: str


def _has_foldable_norms(roles: WeightRoles) -> bool:
    return any(not g.residual and g.readers for g in roles.norms) or any(lay.attention.q_norm for lay in roles.layers)


ATTACKS: dict[str, SpecAttack] = {a.name: a for a in [
    SpecAttack("permute_hidden", attacks_hidden.permute_hidden, lambda r: True, "hidden dimensions permuted"),
    SpecAttack("rotate_hidden", attacks_hidden.rotate_hidden, lambda r: not attacks_hidden.rotation_blockers(r),
               "norm gains folded, hidden space rotated"),
    SpecAttack("rescale_norms", attacks_hidden.rescale_norms, _has_foldable_norms,
               "norm gains rescaled per dimension (query/key norms tied on rotary planes)"),
    SpecAttack("permute_heads", attacks_units.permute_heads, lambda r: r.arch.num_heads > 1,
               "key/value groups and query heads permuted"),
    SpecAttack("per_head_maps", attacks_units.per_head_maps, lambda r: True, "per-head invertible maps on V/O (and Q/K)"),
    SpecAttack("permute_ffn_units", attacks_units.permute_ffn_units, lambda r: True, "FFN units permuted"),
    SpecAttack("scale_ffn_units", attacks_units.scale_ffn_units, lambda r: r.gated, "gated FFN units rescaled"),
    SpecAttack("permute_experts", attacks_units.permute_experts, lambda r: any(lay.moe for lay in r.layers),
               "routed experts permuted with the router rows"),
]}


def applicable(roles: WeightRoles) -> list[str]:
    """The attacks that preserve this model's outputs (by its architecture map), in registry order."""
    return [name for name, a in ATTACKS.items() if a.applies(roles)]


def roles_of(folder: "str | Path") -> tuple[dict[str, "torch.Tensor"], WeightRoles]:
    """A model folder's tensors (one model.safetensors) and their roles."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    st = folder / "model.safetensors"
    if not st.is_file():
        raise HubguardError(f"'{folder}' has no single model.safetensors; the spec-driven attacks read one file.")
    tensors = load_file(str(st))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = bind_architecture(config=config, tensor_names=list(tensors), source=str(folder))
    return tensors, describe(arch=arch, shapes={k: tuple(v.shape) for k, v in tensors.items()})


def attack_tensors(tensors: dict, roles: WeightRoles, *, attacks: list[str], seed: int = 0) -> None:
    """Apply `attacks` in order to `tensors` (in place); each must apply to the model (see `applicable`)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name in attacks:
        attack = ATTACKS.get(name)
        if attack is None:
            raise HubguardError(f"Unknown attack {name!r}; known: {sorted(ATTACKS)}.")
        if not attack.applies(roles):
            raise HubguardError(f"The attack {name!r} does not preserve a '{roles.arch.family}' model's outputs.")
        attack.apply(tensors, roles, generator=generator)


def attack_folder(src: "str | Path", dst: "str | Path", *, attacks: list[str], seed: int = 0) -> Path:
    """A copy of the model folder `src` at `dst` with `attacks` applied to its weights."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    tensors, roles = roles_of(src)
    attack_tensors(tensors, roles, attacks=attacks, seed=seed)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst
