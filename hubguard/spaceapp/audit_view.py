"""The protection-audit tab: a LoRA adapter (uploaded files or `hf://`) and its base -> the scale sweep
(`hubguard.protect.audit.scale_sweep`: W0 + s·ΔW for s in [0, 2], what a merge does to an update) drawn with
`plot_sweep`, and whether the update looks protected.

The metric needs no labels: how often the scaled model's top prediction (next token for a causal LM, class
for a classifier) agrees with the released update's at s = 1, on the user's text or on Python's own docs. An
unprotected update moves smoothly from the base (s = 0) to itself (s = 1), so a half-merged model agrees with
the update at least as much as the bare base does. A protected one (Trap², a scale lock) breaks off s = 1: it
"looks protected" when at a merge-like scale (0.25–0.75) it agrees with the update less than the base does, by
`MARGIN` points or more.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import ProtectionError, SourceError
from hubguard.spaceapp import html
from hubguard.spaceapp.sources import on_space, repo_id_of, resolve_source

if TYPE_CHECKING:
    import torch

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
NEIGHBOURS = (0.75, 1.25)
KEPT_AT_QUARTER = 0.25
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_TEXTS, MAX_LENGTH = 16, 64


@dataclass(frozen=True)
class AuditView:
    result: dict[str, Any]
    card: str
    plot: str | None  # PNG path


def _adapter_from_uploads(files: list[str], into: Path) -> Path:
    """A PEFT folder from uploaded files: exactly adapter_config.json and adapter_model.safetensors, bounded."""
    named = {Path(f).name: Path(f) for f in files}
    missing = [n for n in ADAPTER_FILES if n not in named]
    if missing:
        raise ProtectionError(f"The upload lacks {', '.join(missing)}; a PEFT LoRA adapter is adapter_config.json plus "
                              "adapter_model.safetensors.", fix="Upload both files of the adapter folder.")
    into.mkdir(parents=True, exist_ok=True)
    for n in ADAPTER_FILES:
        if named[n].stat().st_size > MAX_UPLOAD_BYTES:
            raise ProtectionError(f"{n} is larger than {MAX_UPLOAD_BYTES >> 20} MiB; audit it with `hubguard audit`.")
        shutil.copyfile(named[n], into / n)
    return into


def _download(spec: str, into: Path, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    repo, _, revision = spec[len("hf://"):].partition("@")
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision or None, local_dir=str(into),
                                      allow_patterns=patterns, token=constants.hf_token()))
    except Exception as err:  # noqa: BLE001 - network and Hub errors alike
        raise SourceError(f"Could not download {repo}: {type(err).__name__}: {err}.",
                          fix="Check the repo id, that it is public (or HF_TOKEN), and the network.") from err


def _local_or_hub(text: str, what: str, into: Path, patterns: list[str]) -> Path:
    spec = resolve_source(text, what=what)
    return _download(spec, into, patterns) if repo_id_of(spec) else Path(spec)


def _check_size(base: Path) -> None:
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    limit = constants.space_max_audit_parameters()
    if size > 4 * limit:
        raise ProtectionError(f"The base ({config.get('model_type')}, {size >> 20} MiB of weights) is larger than this "
                              f"Space audits ({limit:.0e} parameters).", fix="Run `hubguard audit` on your own machine.")


def _texts(text: str | None) -> list[str]:
    if text and text.strip():
        texts = [t.strip() for t in text.split("\n\n") if t.strip()] or [text.strip()]
    else:
        from pydoc_data import topics  # Python's own docs: text every install has

        texts = [topics.topics[k][:400] for k in sorted(topics.topics)[:MAX_TEXTS]]
    return texts[:MAX_TEXTS]


def _load(base: Path, adapter: Path) -> tuple[Any, Any, str]:
    """(PeftModel, tokenizer, task) for a LoRA adapter on its base."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from hubguard.protect.updates import check_base, load_adapter, read_adapter, update_kind

    if update_kind(adapter) != "adapter":
        raise ProtectionError(f"{adapter} is a full model; the Space audits LoRA adapters.", fix="Use `hubguard audit`.")
    check_base(base)
    cfg, tensors = read_adapter(adapter)
    task = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "classification"}.get(str(cfg.get("task_type") or "").upper())
    if task is None:
        raise ProtectionError(f"The adapter's task_type is {cfg.get('task_type')!r}; the Space audits CAUSAL_LM and "
                              "SEQ_CLS adapters.", fix="Use `hubguard audit` for other tasks.")
    try:
        if task == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(str(base))
        else:
            heads = [t for k, t in tensors.items() if k.endswith(("classifier.weight", "score.weight", "out_proj.weight"))]
            model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=heads[0].shape[0] if heads else 2)
        tokenizer = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError, KeyError) as err:
        raise ProtectionError(f"Cannot load the base {base.name} ({str(err).splitlines()[0][:200]}).",
                              fix="Give the base model the adapter was trained from, with its tokenizer.") from err
    return load_adapter(model, adapter), tokenizer, task


def _batches(tokenizer: Any, texts: list[str], task: str) -> list[dict[str, "torch.Tensor"]]:
    from hubguard.protect.data import TextData, make_batches

    if task == "causal-lm":
        return make_batches(TextData(tuple(texts), None, None), tokenizer=tokenizer, task=task, batch_size=8,
                            max_length=MAX_LENGTH, label_names=None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return [dict(tokenizer(texts[i:i + 8], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
            for i in range(0, len(texts), 8)]


def _predictions(model: Any, batches: list[dict[str, Any]], task: str) -> "torch.Tensor":
    import torch

    out = []
    with torch.no_grad():
        for b in batches:
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            if task == "causal-lm":
                out.append(logits.argmax(-1)[b["attention_mask"].bool()])  # [tokens]
            else:
                out.append(logits.argmax(-1))  # [batch]
    return torch.cat(out)


def verdict_of(sweep: list[dict[str, float]]) -> tuple[str, str]:
    """("looks protected" | "not protected" | "inconclusive", why) from the agreement curve."""
    at = {round(r["scale"], 2): r["agreement"] for r in sweep}
    base = at[0.0]
    if base >= 99.0:
        return "inconclusive", ("On this text the update changes (almost) none of its base's predictions, so scaling it "
                                "shows nothing. Give text from the update's own task.")
    kept = max((at[s] - base) / (100.0 - base) for s in NEIGHBOURS)
    if kept < KEPT_AT_QUARTER:
        return "looks protected", (f"A quarter step off s = 1 (s = 0.75 or 1.25) the model keeps at most {100 * kept:.0f}% "
                                   "of the predictions the update changed: a merge, which rescales the update, breaks it.")
    return "not protected", (f"A quarter step off s = 1 the model still keeps {100 * kept:.0f}% of the predictions the "
                             "update changed: it fades smoothly into its base, so a merge keeps what it learned.")


def run_audit(*, adapter_files: list[str] | None, adapter_source: str | None, base_source: str,
              eval_text: str | None, out_dir: Path | None = None) -> AuditView:
    """Sweep the adapter's scale on its base and say whether it looks protected."""
    from hubguard.protect.audit import plot_sweep, scale_sweep

    work = Path(tempfile.mkdtemp(prefix="hubguard-audit-", dir=out_dir))
    try:
        if adapter_files:
            adapter = _adapter_from_uploads(adapter_files, work / "adapter")
        elif adapter_source and adapter_source.strip():
            adapter = _local_or_hub(adapter_source, "the adapter", work / "adapter", list(ADAPTER_FILES))
        else:
            raise ProtectionError("Upload the adapter's two files or give its hf:// repo.",
                                  fix="adapter_config.json + adapter_model.safetensors, or hf://ORG/ADAPTER.")
        base = _local_or_hub(base_source, "the base model", work / "base",
                             ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"])
        _check_size(base)
        model, tokenizer, task = _load(base, adapter)
        batches = _batches(tokenizer, _texts(eval_text), task)
        reference = _predictions(model, batches, task)

        def metrics(m: Any) -> dict[str, float]:
            return {"agreement": 100.0 * float((_predictions(m, batches, task) == reference).float().mean())}

        sweep = scale_sweep(model=model, mode="lora", metrics=metrics, scales=SCALES)
        verdict, why = verdict_of(sweep)
        plot = plot_sweep({"agreement with the update (%)": [(r["scale"], r["agreement"]) for r in sweep]},
                          out=work / "sweep.png", title="scale sweep: W0 + s·ΔW", y_label="agreement %",
                          reference=sweep[0]["agreement"])
        kept = Path(tempfile.mkstemp(prefix="hubguard-sweep-", suffix=".png", dir=out_dir)[1])
        shutil.copyfile(plot, kept)
        at = {round(r["scale"], 2): r["agreement"] for r in sweep}
        card = html.audit_card(verdict=verdict, summary=why, details=[
            ("task", task), ("base (s = 0)", f"{at[0.0]:.0f}%"), ("half-merged (s = 0.5)", f"{at[0.5]:.0f}%"),
            ("doubled (s = 2)", f"{at[2.0]:.0f}%")])
        result = {"verdict": verdict, "why": why, "task": task, "metric": "agreement with the update at s = 1 (%)",
                  "sweep": sweep, "texts": "yours" if eval_text and eval_text.strip() else "Python's docs",
                  "on_space": on_space()}
        return AuditView(result=result, card=card, plot=str(kept))
    finally:
        shutil.rmtree(work, ignore_errors=True)
