"""Every output-preserving attack leaves hubguard's verdict at `derivative` with score >= 95.

Each attack is first checked to really preserve the model's outputs (logits equal), so the test cannot pass
on an attack that quietly changed the function.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import hubguard
from hubguard.lineage.sketch import sketch
from hubguard.redteam import attacks
from hubguard.redteam.baselines import huref_official, pcs

TEXT = "The function returns a new object when the argument is not required by the caller."


def _llama_config(vocab: int):
    import transformers as T

    return T.LlamaConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=vocab, tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def llama_source(tmp_path_factory, bpe_tokenizer) -> Path:
    """A small causal Llama (GQA) with structured norm gains, saved with its tokenizer."""
    import transformers as T
    from tokenizers import Tokenizer

    from tests.support.factory import build_model, save_with_tokenizer

    vocab = Tokenizer.from_file(str(bpe_tokenizer)).get_vocab_size()
    torch.manual_seed(0)
    base = build_model(_llama_config(vocab), seed=0)
    model = T.LlamaForCausalLM(_llama_config(vocab)).eval()
    model.model.load_state_dict(base.state_dict())
    return save_with_tokenizer(model, tmp_path_factory.mktemp("llama") / "source", tokenizer_json=bpe_tokenizer)


@pytest.fixture(scope="session")
def source_fp(llama_source):
    return hubguard.fingerprint(llama_source)


def _load(folder: Path):
    import transformers as T

    return T.LlamaForCausalLM.from_pretrained(folder).eval()


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _attacked(src: Path, dst: Path, attack: Callable) -> Path:
    model = _load(src)
    ids = attacks.tokenizer_ids(src / "tokenizer.json", TEXT)
    before = _logits(model, ids)
    attack(model)
    after = _logits(model, ids)
    assert torch.allclose(before, after, atol=2e-4, rtol=1e-3), "the attack must preserve outputs"
    changed = any(not torch.equal(p, q) for p, q in zip(_load(src).state_dict().values(), model.state_dict().values()))
    assert changed, "the attack must change the weights"
    model.save_pretrained(dst, safe_serialization=True)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    return dst


WEIGHT_ATTACKS: dict[str, Callable] = {
    "permute_ffn_units": attacks.permute_ffn_units,
    "scale_ffn_units": attacks.scale_ffn_units,
    "permute_heads": attacks.permute_heads,
    "permute_hidden": attacks.permute_hidden,
    "rotate_hidden": attacks.rotate_hidden,
    "fold_norm_gains": attacks.fold_norm_gains,
    "scale_gammas": attacks.scale_gammas_uniformly,
    "rescale_hidden": attacks.rescale_hidden,
    "per_head_maps": attacks.per_head_maps,
    "all_at_once": lambda m: [f(m) for f in (attacks.permute_ffn_units, attacks.per_head_maps, attacks.permute_heads, attacks.rescale_hidden, attacks.rotate_hidden)],
}


@pytest.fixture(scope="session")
def attacked(llama_source, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attacked")
    return {name: _attacked(llama_source, root / name, fn) for name, fn in WEIGHT_ATTACKS.items()}


@pytest.mark.parametrize("name", list(WEIGHT_ATTACKS))
def test_weight_attack_is_detected(name, attacked, source_fp) -> None:
    result = hubguard.compare(source_fp, attacked[name])
    assert result.verdict == "derivative", result.to_dict()["terms"]
    assert result.score >= 95, result.to_dict()["terms"]
    assert all(m.match == m.layer for m in result.layers)
    assert float(sketch(source_fp) @ sketch(hubguard.fingerprint(attacked[name]))) > 0.9


def test_embedding_row_permutation_with_matching_tokenizer(llama_source, source_fp, tmp_path) -> None:
    dst = tmp_path / "vocab-permuted"
    shutil.copytree(llama_source, dst)
    new_of_old = attacks.permute_vocabulary(dst, seed=3)
    ids_old = attacks.tokenizer_ids(llama_source / "tokenizer.json", TEXT)
    ids_new = attacks.tokenizer_ids(dst / "tokenizer.json", TEXT)
    assert ids_new == [new_of_old[i] for i in ids_old] != ids_old
    before, after = _logits(_load(llama_source), ids_old), _logits(_load(dst), ids_new)
    assert torch.allclose(before[:, ids_old], after[:, ids_new], atol=1e-5)
    result = hubguard.compare(source_fp, dst)
    assert result.verdict == "derivative" and result.score >= 95
    # The official HuRef terms align tokens by id and miss it.
    assert huref_official(llama_source, dst).score < 50


def test_vocabulary_extension(llama_source, source_fp, tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(llama_source / "tokenizer.json"))
    added = tok.add_tokens([f"newword{i}" for i in range(300)])
    model = _load(llama_source)
    ids = tok(TEXT)["input_ids"]
    before = _logits(model, ids)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    assert torch.allclose(before, _logits(model, ids)[:, : before.shape[1]], atol=1e-5)
    dst = tmp_path / "extended"
    model.save_pretrained(dst, safe_serialization=True)
    tok.save_pretrained(dst)
    assert added == 300
    result = hubguard.compare(source_fp, dst)
    assert result.verdict == "derivative" and result.score >= 95
    assert result.common_tokens == len(source_fp.tokens)


def test_layer_removal_and_duplication_are_matched(llama_source, source_fp, tmp_path) -> None:
    """Drop layer 1 and duplicate layer 2: the per-layer map must find where each layer came from."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(llama_source / "model.safetensors"))
    order = [0, 2, 2]  # new layer -> old layer
    out = {}
    for name, t in tensors.items():
        if ".layers." not in name:
            out[name] = t
    for new, old in enumerate(order):
        for name, t in tensors.items():
            if f".layers.{old}." in name:
                out[name.replace(f".layers.{old}.", f".layers.{new}.")] = t.clone()
    dst = tmp_path / "restacked"
    shutil.copytree(llama_source, dst)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    result = hubguard.compare(source_fp, dst)
    assert [m.match for m in result.layers] == order
    assert result.verdict == "derivative" and result.score >= 95


def test_official_huref_fails_on_rotation_and_rescaling(llama_source, attacked) -> None:
    """The published formulas break under the attacks hubguard survives (as the HuRef paper's critics showed)."""
    assert huref_official(llama_source, llama_source).score > 99.9
    assert huref_official(llama_source, attacked["permute_ffn_units"]).score > 99  # invariant to permutations
    rotated = huref_official(llama_source, attacked["rotate_hidden"])
    assert rotated.score < 70 and all(v < 20 for k, v in rotated.detail.items() if k.startswith("M_f"))
    rescaled = huref_official(llama_source, attacked["rescale_hidden"])
    assert rescaled.score < 80 and all(v < 75 for k, v in rescaled.detail.items() if k.startswith("M_a"))
    assert huref_official(llama_source, attacked["per_head_maps"]).score < 60  # GQA heads tiled, not interleaved
    assert pcs(llama_source, llama_source).score > 99.9
    assert pcs(llama_source, attacked["permute_hidden"]).score < 85
    assert pcs(llama_source, attacked["rotate_hidden"]).score < 85
    assert pcs(llama_source, attacked["all_at_once"]).score < 70


def test_frankenmerge_of_two_bases_shows_both(family_models, tmp_path) -> None:
    """Layers copied under another model's embedding are found by reading them through the reference's rows."""
    from safetensors.torch import load_file, save_file

    s0, s1 = family_models["llama"][0], family_models["llama"][1]
    t0, t1 = load_file(str(s0 / "model.safetensors")), load_file(str(s1 / "model.safetensors"))
    mixed = {k: (t1[k] if any(f"layers.{i}." in k for i in (1, 2)) else v) for k, v in t0.items()}
    dst = tmp_path / "franken"
    shutil.copytree(s0, dst)
    save_file(mixed, str(dst / "model.safetensors"))
    from_s1 = hubguard.compare(s1, dst)
    assert from_s1.verdict == "derivative"
    assert [(m.layer, m.match) for m in from_s1.layers if m.z >= 5] == [(1, 1), (2, 2)]
    assert any("reference's embedding" in n for n in from_s1.notes)
    # fingerprints alone (no weights, no probe) cannot see it; the candidate's own embedding is s0's
    assert hubguard.compare(hubguard.fingerprint(s1), hubguard.fingerprint(dst)).verdict != "derivative"
    from_s0 = hubguard.compare(s0, dst)
    assert [m.match for m in from_s0.layers if m.z >= 5] == [0]
    # a saved reference keeps its token rows when asked to, and the cross reading works from the file too
    ref = hubguard.save_fingerprint(hubguard.fingerprint(s1, keep_probe=True), tmp_path / "s1.fp.safetensors")
    assert hubguard.load_fingerprint(ref).probe is not None
    assert hubguard.compare(ref, dst).verdict == "derivative"
    # independent models stay independent with the cross reading
    assert hubguard.compare(s0, s1).verdict == "independent"
