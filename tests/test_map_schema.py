"""Architecture maps as data: every shipped map parses and claims its own model_types; malformed maps are refused
with the file and key; config rules (conditional tensors, dotted keys, refusals, layer counts) bind as the
modeling code builds the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hubguard.errors import ArchitectureMapError, UnsupportedArchitectureError
from hubguard.weights.binding import bind_architecture
from hubguard.weights.model import open_model
from hubguard.weights.spec import ARCH_SCHEMA_VERSION, load_specs, parse_spec

LLAMA = Path(__file__).resolve().parents[1] / "hubguard" / "weights" / "architectures" / "llama.json"


def test_every_map_parses_and_claims_distinct_model_types() -> None:
    specs = load_specs()
    assert len(specs) >= 36
    claimed: dict[str, str] = {}
    for spec in specs:
        for t in spec.model_types:
            assert t not in claimed, f"model_type {t!r} is claimed by both {claimed[t]} and {spec.family}"
            claimed[t] = spec.family
    assert claimed["qwen3"] == "qwen3" and claimed["qwen2"] == "qwen2"  # Qwen3 is no longer read as Qwen2


def _llama() -> dict:
    return json.loads(LLAMA.read_text())


def _moe(d: dict) -> dict:
    d["moe"] = {"layers": {"all": True}, "router": "layers.${layer_index}.mlp.gate.weight",
                "experts": {"gate": "g.${expert_index}", "up": "u.${expert_index}", "down": "d.${expert_index}"}}
    return d


BAD_MAPS = {
    "schema_version": (lambda d: {**d, "schema_version": ARCH_SCHEMA_VERSION + 1}, "schema_version"),
    "norm type": (lambda d: {**d, "norm": {"type": "batch"}}, "norm.type"),
    "missing attention norm": (lambda d: {**d, "attention": {k: v for k, v in d["attention"].items() if k != "norm"}},
                               "attention.norm"),
    "rotary layout": (lambda d: {**d, "attention": {**d["attention"], "rotary": "spiral"}}, "attention.rotary"),
    "qk-norm scope": (lambda d: {**d, "attention": {**d["attention"], "qk_norm": {"q": "a", "k": "b", "scope": "row"}}},
                      "attention.qk_norm.scope"),
    "fused qkv without layout": (lambda d: {**d, "attention": {"norm": "n", "qkv": "w", "o": "o"}}, "qkv_layout"),
    "moe without expert count": (lambda d: _moe(d), "num_experts"),
    "moe layer rule": (lambda d: {**_moe(d), "config": {**d["config"], "num_experts": ["n"]},
                                  "moe": {**_moe(d)["moe"], "layers": {"sometimes": 1}}}, "moe.layers"),
    "expert layout": (lambda d: {**_moe(d), "config": {**d["config"], "num_experts": ["n"]},
                                 "moe": {**_moe(d)["moe"], "fused_experts": {"gate_up": "a", "down": "b", "layout": "x"}}},
                      "moe.fused_experts.layout"),
    "requires": (lambda d: {**d, "requires": [{"when": {"x": 1}}]}, "requires[0].refuse"),
    "latent attention": (lambda d: {**d, "attention": {"norm": "n", "kv_b": "b", "o": "o"}}, "latent attention needs"),
}


@pytest.mark.parametrize("case", sorted(BAD_MAPS))
def test_malformed_maps_are_refused_with_the_key(case: str) -> None:
    make, key = BAD_MAPS[case]
    with pytest.raises(ArchitectureMapError, match=key.replace("[", r"\[").replace("]", r"\]")) as err:
        parse_spec(make(_llama()), path="my_map.json")
    assert "my_map.json" in str(err.value)


def test_schema_1_maps_still_load() -> None:
    spec = parse_spec({**_llama(), "schema_version": 1}, path="old.json")
    assert spec.family == "llama" and spec.moe is None and spec.attention.qk_norm is None


def test_refused_configs_say_why(family_models: dict, tmp_path: Path) -> None:
    folder = shutil.copytree(family_models["opt"][0], tmp_path / "opt350m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "do_layer_norm_before": False}))
    with pytest.raises(UnsupportedArchitectureError, match="post-LayerNorm OPT"):
        open_model(folder)


def test_dotted_config_keys_give_partial_rotary(family_models: dict) -> None:
    for family, rotary_dim in (("phi", 8), ("stablelm", 4), ("gptj", 8), ("llama", 16), ("glm4", 8)):
        arch = open_model(family_models[family][0]).arch
        assert arch.rotary_dim == rotary_dim, family


def _tiny(name: str, tmp_path: Path, **kwargs) -> Path:
    import transformers as T

    from tests.support.factory import FAMILIES, build_model

    case = FAMILIES[name]
    config = getattr(T, case.config_class)(vocab_size=300, **{**case.kwargs, **kwargs})
    model = build_model(config, seed=0, model_class=case.model_class)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_conditional_tensors_follow_the_config(tmp_path: Path) -> None:
    """StableLM with use_parallel_residual: the FFN reads input_layernorm (there is no post_attention_layernorm);
    GPTBigCode without multi_query: c_attn is [heads, 3, hd] per head, not [q; k; v]."""
    import transformers as T

    folder = _tiny("stablelm", tmp_path, use_parallel_residual=True)
    model = T.StableLmForCausalLM.from_pretrained(folder).eval()
    layer = open_model(folder).reader.read(0)
    ln, mlp = model.model.layers[0].input_layernorm, model.model.layers[0].mlp
    up = mlp.up_proj.weight.detach() * ln.weight.detach()
    assert torch.allclose(layer.dense.up, up - up.mean(dim=1, keepdim=True), atol=1e-6)

    folder = _tiny("gpt_bigcode", tmp_path, multi_query=False)
    weights = open_model(folder)
    assert weights.arch.qkv_layout == "grouped" and weights.arch.num_kv_heads == 4
    model = T.GPTBigCodeForCausalLM.from_pretrained(folder).eval()
    c_attn = model.transformer.h[0].attn.c_attn.weight.detach().reshape(4, 3, 16, 64)
    ln = model.transformer.h[0].ln_1.weight.detach()
    q = c_attn[:, 0] * ln
    assert torch.allclose(weights.reader.read(0).q, q - q.mean(dim=-1, keepdim=True), atol=1e-6)


def test_layers_beyond_the_config_are_skipped_where_the_map_says_so(family_models: dict, tmp_path: Path) -> None:
    """DeepSeek V3 checkpoints carry a multi-token-prediction layer after the last decoder layer; transformers does
    not load it, so neither does hubguard."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(family_models["deepseek_v3"][0], tmp_path / "mtp")
    tensors = load_file(str(folder / "model.safetensors"))
    extra = {k.replace("layers.1.", "layers.2."): v.clone() for k, v in tensors.items() if ".layers.1." in k}
    save_file({**tensors, **extra}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert open_model(folder).arch.num_layers == 2


def test_embedding_projection_only_when_the_sizes_differ(family_models: dict) -> None:
    projected = open_model(family_models["electra"][0]).arch
    assert projected.embedding_projected
    cfg = {"model_type": "electra", "hidden_size": 64, "embedding_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    names = ["electra.embeddings.word_embeddings.weight", "electra.encoder.layer.0.attention.self.query.weight"]
    assert not bind_architecture(config=cfg, tensor_names=names).embedding_projected


def test_extends_must_name_another_known_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"family": "loop_a", "extends": "loop_b"}))
    (tmp_path / "b.json").write_text(json.dumps({"family": "loop_b", "extends": "loop_a"}))
    monkeypatch.setenv("HUBGUARD_ARCHITECTURES", str(tmp_path))
    load_specs.cache_clear()
    try:
        with pytest.raises(ArchitectureMapError, match="'extends' must name another known map"):
            load_specs()
    finally:
        monkeypatch.delenv("HUBGUARD_ARCHITECTURES")
        load_specs.cache_clear()


def test_multimodal_maps_read_the_nested_text_config(family_models: dict, tmp_path: Path) -> None:
    weights = open_model(family_models["gemma3"][0])
    assert weights.arch.family == "gemma3" and weights.arch.num_heads == 4 and weights.arch.qk_norm is not None
    folder = shutil.copytree(family_models["gemma3"][0], tmp_path / "no-text-config")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("text_config")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="text_config"):
        open_model(folder)
