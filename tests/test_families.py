"""Every listed family fingerprints, matches itself, and is told apart from an independent init."""

from __future__ import annotations

import json

import pytest

import hubguard
from hubguard.weights.binding import bind_architecture
from hubguard.weights.canonical import LayerReader
from hubguard.weights.plan import LAYER_SHARE
from hubguard.weights.source import open_source
from hubguard.weights.spec import load_specs
from tests.support.factory import FAMILIES as FAMILY_CASES

FAMILIES = sorted(FAMILY_CASES)
CROSS_READ = {"llama", "qwen2_moe", "gemma2", "deepseek_v3", "gpt2", "bert"}  # also compared against the folder itself


def test_every_family_has_a_map() -> None:
    assert set(FAMILIES) <= {m.family for m in load_specs()}
    assert {m.family for m in load_specs()} <= set(FAMILIES), "every shipped map needs a tiny model in tests/support/factory.py"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_fingerprint_and_compare(family: str, family_models, family_fingerprints) -> None:
    """Each family binds its own map (by config model_type), fingerprints every layer, matches itself and tells
    an independent init of the same config apart."""
    a = family_models[family][0]
    fa = family_fingerprints[family][0]
    assert fa.model["family"] == family and fa.model["binding"].startswith("config model_type")
    assert len(fa.layers) == fa.model["num_layers"] >= 2
    assert len(fa.tokens) >= 200
    for t in fa.terms.values():
        assert t.shape == (len(fa.layers), len(fa.tokens), len(fa.tokens))
    # whole-layer FFN terms for dense FFNs; MoE layers are read expert by expert (per-expert sketches)
    ffn = set(fa.terms) | set(fa.experts)
    assert {"attn_qk", "attn_vo"} <= set(fa.terms) and {"attn_qk", "attn_vo"} <= set(fa.heads)
    assert {"ffn"} <= ffn or {"ffn_up", "ffn_gate"} <= ffn, (sorted(fa.terms), sorted(fa.experts))
    assert all(n > 0 for n in fa.expert_counts), fa.expert_counts
    same = hubguard.compare(fa, a if family in CROSS_READ else fa)
    assert same.verdict == "derivative" and same.score > 99.9
    other = hubguard.compare(fa, family_fingerprints[family][1])
    assert other.verdict == "independent", other.to_dict()["terms"]
    assert abs(other.score) < 10


def test_real_minilm(minilm) -> None:
    fp = hubguard.fingerprint(minilm)
    assert fp.model["family"] == "bert" and fp.model["num_layers"] == 6
    assert fp.model["tokenizer_style"] == "wordpiece"
    # only the token rows are read, not the whole 30522-row embedding
    emb_bytes = 30522 * 384 * 4
    assert fp.stats["bytes_read"] < fp.stats["bytes_total"] - emb_bytes * 0.9
    json.dumps(fp.summary())


def test_reading_budget(minilm) -> None:
    full = hubguard.fingerprint(minilm, budget=None)
    cheap = hubguard.fingerprint(minilm, budget=0.15)
    assert cheap.stats["bytes_read"] <= 0.15 * cheap.stats["bytes_total"]
    assert not cheap.stats["ffn_read"] and set(cheap.terms) == {"attn_qk", "attn_vo"}
    assert 2 <= len(cheap.layers) < len(full.layers)
    result = hubguard.compare(full, cheap)
    assert result.verdict == "derivative" and result.score > 99
    assert [m.match for m in result.layers] == list(cheap.layers)
    with pytest.raises(hubguard.errors.FingerprintError, match="budget"):
        hubguard.fingerprint(minilm, budget=0.001)


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt_neox", "falcon", "gemma", "qwen3", "olmo2", "cohere", "stablelm"])
def test_head_slice_budget(family: str, family_models: dict) -> None:
    """Tight budgets read only query/key rows of a few heads; verdicts against full references hold."""
    a, b = family_models[family][0], family_models[family][1]
    full = hubguard.fingerprint(a, budget=None)
    total = full.stats["bytes_total"]
    ckpt = open_source(a)
    reader = LayerReader(tensors=ckpt.tensors, arch=bind_architecture(config=ckpt.config, tensor_names=ckpt.tensors.names()))
    emb_bytes = len(full.tokens) * ckpt.tensors.info(reader.arch.embedding_name).row_bytes
    # room for the embedding rows and ~2.5 layers of attention: too little for attention terms of most layers
    budget = (emb_bytes + 2.5 * reader.part_bytes(0)["attention"]) / total
    sliced = hubguard.fingerprint(a, budget=budget)
    assert sliced.stats["plan"]["mode"] == "qk_heads", sliced.stats["plan"]
    assert set(sliced.terms) == {"attn_qk"} and len(sliced.layers) == len(full.layers)
    assert sliced.stats["bytes_read"] <= budget * total + 16384  # + headers and tokenizer-independent overhead
    same = hubguard.compare(full, sliced)
    assert same.verdict == "derivative", same.to_dict()["terms"]
    other = hubguard.compare(full, hubguard.fingerprint(b, budget=budget))
    assert other.verdict == "independent"


def test_latent_attention_under_a_budget_reads_whole_attention_layers(family_models: dict) -> None:
    """MLA's query/key rows are products of low-rank maps, not row blocks: a tight budget reads the attention of
    fewer layers instead of head slices, and still gives verdicts against the full fingerprint."""
    a = family_models["deepseek_v3"][0]
    full = hubguard.fingerprint(a, budget=None)
    ckpt = open_source(a)
    reader = LayerReader(tensors=ckpt.tensors, arch=bind_architecture(config=ckpt.config, tensor_names=ckpt.tensors.names()))
    assert not reader.supports_head_slices
    emb_bytes = len(full.tokens) * ckpt.tensors.info(reader.arch.embedding_name).row_bytes
    budget = (emb_bytes + 2.5 * reader.part_bytes(1)["attention"]) / LAYER_SHARE / full.stats["bytes_total"]
    cheap = hubguard.fingerprint(a, budget=budget)
    assert cheap.stats["plan"]["mode"] == "attention" and set(cheap.terms) == {"attn_qk", "attn_vo"}
    assert hubguard.compare(full, cheap).verdict == "derivative"


def test_fingerprint_function_survives_the_fingerprint_package_import(minilm) -> None:
    """`hubguard.fingerprint` names both the dog package and the API function; both uses must work."""
    import hubguard.portraits.renderer  # noqa: F401 - rebinds hubguard.fingerprint to the package

    fp = hubguard.fingerprint(minilm)
    assert isinstance(fp, hubguard.lineage.Fingerprint)
    assert callable(hubguard.portraits.renderer.render_dog)
