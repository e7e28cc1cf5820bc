"""`attack_<name>` zoo entries: every output-preserving attack of `hubguard.redteam.attacks` applied to the SFT
derivative of each base (where the attack supports the family), plus one `attack_combined` chain.

Attacks are discovered from the module: public functions whose first parameter is ``model`` change a loaded
transformers model in place; those whose first parameter is ``folder`` change a saved folder (weights and
tokenizer.json). Applicability to a family is checked on an untrained model of the family config: an attack
that raises `HubguardError` there gets no entry for that family (listed in the manifest's notes instead).
Each entry records how well the outputs were preserved (max |Δ logit| on held-out text).
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Order of the combined chain (names of attack functions); those missing from the module are left out.
COMBINED_MODEL_CHAIN = ("rotate_hidden", "rescale_hidden", "permute_ffn_units", "scale_ffn_units", "per_head_maps",
                        "permute_heads")
COMBINED_FOLDER_CHAIN = ("permute_vocabulary",)


def discover() -> tuple[dict[str, Callable[..., Any]], dict[str, Callable[..., Any]]]:
    """(model attacks, folder attacks) of `hubguard.redteam.attacks`, by name."""
    from hubguard.redteam import attacks

    model_attacks, folder_attacks = {}, {}
    for name, fn in sorted(vars(attacks).items()):
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != attacks.__name__:
            continue
        params = list(inspect.signature(fn).parameters)
        if params and params[0] == "model":
            model_attacks[name] = fn
        elif params and params[0] == "folder":
            folder_attacks[name] = fn
    return model_attacks, folder_attacks


def _call(fn: Callable[..., Any], target: Any, seed: int) -> Any:
    if "seed" in inspect.signature(fn).parameters:
        return fn(target, seed=seed)
    return fn(target)


def applicable(*, family: str, attack: str) -> bool:
    """Whether a model attack runs on this family (tried on an untrained model of the family config with a
    small vocabulary, so planning needs no tokenizer)."""
    from hubguard.errors import HubguardError
    from zoo_lib.training import family_config, new_model

    model_attacks, _ = discover()
    model = new_model(family=family, config=family_config(family=family, vocab_size=64, tokenizer=None), seed=0)
    try:
        _call(model_attacks[attack], model, 0)
    except HubguardError:
        return False
    return True


def _logits(folder: Path, text: str) -> tuple[Any, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    ids = tok(text, add_special_tokens=False)["input_ids"][:128]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32").eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0], ids


def build_attack(
    *, ctx: Any, family: str, parent: Path, model_chain: list[str], folder_chain: list[str], seed: int, out: Path
) -> dict[str, Any]:
    """Load ``parent``, apply the model attacks in order, save, apply the folder attacks; measure Δ logits."""
    from transformers import AutoModelForCausalLM

    model_attacks, folder_attacks = discover()
    model = AutoModelForCausalLM.from_pretrained(str(parent), dtype="float32")
    for i, name in enumerate(model_chain):
        _call(model_attacks[name], model, seed + i)
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(parent / name, out / name)
    new_of_old = None
    for i, name in enumerate(folder_chain):
        result = _call(folder_attacks[name], out, seed + 100 + i)
        if name == "permute_vocabulary":
            new_of_old = result
    text = ctx.corpus("licenses").text[:2000]
    before, ids_before = _logits(parent, text)
    after, ids_after = _logits(out, text)
    n = min(len(ids_before), len(ids_after))
    if new_of_old is not None:  # logits of the attacked model are indexed by new ids
        import torch

        after = after[:, torch.tensor(new_of_old)]
    diff = float((before[:n] - after[:n]).abs().max())
    return {"attacks": model_chain + folder_chain, "attack_module": "hubguard.redteam.attacks",
            "max_abs_logit_diff": round(diff, 6), "same_token_ids_after_remap":
            new_of_old is None or [new_of_old[i] for i in ids_before[:n]] == ids_after[:n],
            "train_tokens": 0}


def attack_model_specs(*, ctx: Any, out: Path, specs: list[Any], spec_cls: type) -> list[Any]:
    """One spec per (SFT derivative named ``<base>-sft``, applicable attack), plus ``attack_combined``."""
    model_attacks, folder_attacks = discover()
    result = []
    cache: dict[tuple[str, str], bool] = {}
    for sft in [s for s in specs if s.kind == "sft" and s.name.endswith("-sft") and s.family in ("llama", "gpt2")]:
        fam = sft.family
        for name in model_attacks:
            if (fam, name) not in cache:
                cache[(fam, name)] = applicable(family=fam, attack=name)
        chains = {name: ([name], []) for name in model_attacks if cache[(fam, name)]}
        chains |= {name: ([], [name]) for name in folder_attacks}
        combined = [n for n in COMBINED_MODEL_CHAIN if n in model_attacks and cache[(fam, n)]]
        folder_combined = [n for n in COMBINED_FOLDER_CHAIN if n in folder_attacks]
        if len(combined) + len(folder_combined) > 1:
            chains["combined"] = (combined, folder_combined)
        skipped = sorted(n for n in model_attacks if not cache[(fam, n)])
        for k, (name, (mchain, fchain)) in enumerate(sorted(chains.items())):
            seed = sft.seed * 100 + k
            result.append(spec_cls(
                name=f"{sft.name}-attack-{name.replace('_', '-')}", family=fam, kind=f"attack_{name}", base=sft.base,
                seed=seed, deps=(sft.name,), parents=(sft.name,),
                extra={"attacks_not_applicable_to_family": skipped},
                build=lambda o, f=fam, p=out / sft.name, m=mchain, fc=fchain, s=seed: build_attack(
                    ctx=ctx, family=f, parent=p, model_chain=list(m), folder_chain=list(fc), seed=s, out=o)))
    return result


def describe() -> str:
    model_attacks, folder_attacks = discover()
    return json.dumps({"model": sorted(model_attacks), "folder": sorted(folder_attacks)})
