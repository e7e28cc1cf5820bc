"""Every output-preserving attack that applies to a family, on a tiny model of every family: the logits stay
the same (transformers forward before/after), the canonical products stay the same (heads and experts matched),
and the fingerprint of all of them at once is `derivative` with score >= 95 against the untouched model.

The attacks are the spec-driven ones (`hubguard.redteam.attacks_spec`): one implementation for all families,
told by each family's architecture map which tensors are readers and writers of the residual stream, heads,
FFN units and experts. Which attacks apply is checked against what each family's modeling code allows (a hidden
rotation needs norms that commute with it; expert permutations need experts), so an attack that silently stops
applying fails here. The exhaustive sweep (every attack fingerprinted on its own) is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import hubguard
from hubguard.redteam.attacks_spec import ATTACKS, applicable, attack_folder, roles_of
from tests.support.factory import FAMILIES
from tests.support.invariants import verify_attacks

ALWAYS = {"permute_hidden", "permute_heads", "per_head_maps", "permute_ffn_units"}
ROTATION = {  # RMSNorm (or parameter-free LayerNorm) everywhere, no post-norms, untied LM head
    "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "granite", "olmo", "mixtral", "qwen2_moe", "qwen3_moe",
    "deepseek_v2", "deepseek_v3", "llama4_text", "llama4",
}
NO_FOLDABLE_NORMS = {"olmo", "bert", "roberta", "distilbert", "mpnet", "deberta-v2"}  # parameter-free or post-LN
PLAIN_FFN = {"phi", "starcoder2", "gpt2", "gpt_neox", "falcon", "gpt_bigcode", "gptj", "opt", "bert", "roberta",
             "distilbert", "mpnet", "electra", "deberta-v2"}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "llama4_text", "llama4"}
LOGIT_TOLERANCE = 1e-4  # relative to the largest logit
PRODUCT_TOLERANCE = 1e-4


def expected_attacks(family: str) -> set[str]:
    out = set(ALWAYS)
    out |= {"rotate_hidden"} if family in ROTATION else set()
    out |= set() if family in NO_FOLDABLE_NORMS else {"rescale_norms"}
    out |= set() if family in PLAIN_FFN else {"scale_ffn_units"}
    out |= {"permute_experts"} if family in MOE else set()
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_applicable_attack_preserves_outputs_and_lineage(family: str, family_models, family_fingerprints,
                                                               tmp_path: Path) -> None:
    src = family_models[family][0]
    report = verify_attacks(family=family, src=src, workdir=tmp_path,
                            base_fingerprint=family_fingerprints[family][0])
    assert set(report["attacks"]) == expected_attacks(family)
    for name, r in report["attacks"].items():
        assert r["changed"], f"{name} must change the weights"
        assert r["logits"] < LOGIT_TOLERANCE, f"{name} changed {family}'s logits by {r['logits']:.2e}: the attack or the map is wrong"
        assert max(r["products"].values()) < PRODUCT_TOLERANCE, f"{name} changed {family}'s canonical products: {r['products']}"
    combined = report["combined"]
    assert combined["logits"] < LOGIT_TOLERANCE
    assert combined["verdict"] == "derivative" and combined["score"] >= 95, combined["terms"]


def test_multimodal_image_path_is_preserved_too(family_models, tmp_path: Path) -> None:
    """Gemma 3's projector writes image embeddings into the hidden space: the hidden-space attacks transform it, so
    logits with an image stay the same as well (the fingerprint reads the language model only)."""
    import torch
    import transformers as T

    src = family_models["gemma3"][0]
    ids = [5, 6, 2991] + [2990] * 4 + [2992, 7, 8, 9]  # text, <boi>, 4 image tokens, <eoi>, text
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))

    def logits(folder: Path) -> torch.Tensor:
        model = T.Gemma3ForConditionalGeneration.from_pretrained(folder).eval()
        types = torch.tensor([[int(i == 2990) for i in ids]])
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids]), pixel_values=pixels, token_type_ids=types).logits[0].double()

    base = logits(src)
    for name in ("permute_hidden", "rescale_norms"):
        out = logits(attack_folder(src, tmp_path / name, attacks=[name], seed=1))
        assert float((out - base).abs().max() / base.abs().max()) < LOGIT_TOLERANCE, name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attacks_that_do_not_apply_are_refused(family: str, family_models, tmp_path: Path) -> None:
    """An attack the family's norms or layout do not allow is refused, not applied as a silent no-op."""
    src = family_models[family][0]
    _, roles = roles_of(src)
    for name in sorted(set(ATTACKS) - set(applicable(roles))):
        with pytest.raises(hubguard.errors.HubguardError, match="does not preserve"):
            attack_folder(src, tmp_path / name, attacks=[name])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_attack_alone_is_derivative(family: str, family_models, family_fingerprints, tmp_path: Path) -> None:
    src = family_models[family][0]
    _, roles = roles_of(src)
    base = family_fingerprints[family][0]
    for name in applicable(roles):
        result = hubguard.compare(base, hubguard.fingerprint(attack_folder(src, tmp_path / name, attacks=[name], seed=3)))
        assert result.verdict == "derivative" and result.score >= 95, (name, result.to_dict()["terms"])
