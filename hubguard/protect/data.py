"""Reading the text data `hubguard protect` / `hubguard audit` train and evaluate on.

Formats: `.txt` (examples separated by blank lines), `.jsonl` (one object per line with "text", and "label"
for classification). Causal-LM data is tokenised and cut into blocks; classification data keeps one example
per row. Everything becomes lists of batches (dicts of tensors) for `train_protected`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubguard.errors import ProtectionError

TASKS = ("causal-lm", "classification")


@dataclass(frozen=True)
class TextData:
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None
    label_names: tuple[str, ...] | None


def read_text_data(path: str | Path, *, task: str) -> TextData:
    """Read `path`; errors say what is wrong with the file and how to fix it."""
    if task not in TASKS:
        raise ProtectionError(f"Unknown task {task!r}; use one of {TASKS}.")
    p = Path(path)
    if not p.is_file():
        raise ProtectionError(f"Data file {p} does not exist. Pass a .txt or .jsonl file.")
    texts: list[str] = []
    labels: list[str] = []
    if p.suffix == ".jsonl":
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ProtectionError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start}); save the .jsonl as "
                                  "UTF-8.") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProtectionError(f"{p}:{i} is not valid JSON ({exc.msg}); write one object per line.") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ProtectionError(f'{p}:{i} has no string "text" field; each line needs {{"text": ...}}.')
            texts.append(row["text"])
            if task == "classification":
                if "label" not in row:
                    raise ProtectionError(f'{p}:{i} has no "label"; classification data needs one per line.')
                labels.append(str(row["label"]))
    elif p.suffix in (".txt", ".md", ""):
        if task == "classification":
            raise ProtectionError(f"{p}: classification data must be .jsonl with text and label fields.")
        texts = [t.strip() for t in p.read_text(encoding="utf-8", errors="replace").split("\n\n") if t.strip()]
    else:
        raise ProtectionError(f"{p}: unsupported data format {p.suffix!r}; use .txt or .jsonl.")
    if not texts:
        raise ProtectionError(f"{p} holds no examples: there is nothing to train or evaluate on.")
    if task == "classification":
        names = tuple(sorted(set(labels)))
        if len(names) < 2:
            raise ProtectionError(f"{p} has fewer than two distinct labels; classification needs at least two.")
        return TextData(tuple(texts), tuple(labels), names)
    return TextData(tuple(texts), None, None)


def make_batches(
    data: TextData, *, tokenizer: Any, task: str, batch_size: int, max_length: int, label_names: tuple[str, ...] | None
) -> list[dict[str, Any]]:
    """Tokenise into batches with labels (causal LM: labels = input ids, padding masked with -100)."""
    import torch

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if task == "causal-lm":
        ids: list[int] = []
        for t in data.texts:
            ids.extend(tokenizer(t)["input_ids"])
        blocks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
        blocks = [b for b in blocks if len(b) >= 2]
        if not blocks:
            raise ProtectionError("The data tokenises to nothing; pass longer texts.")
        out = []
        for i in range(0, len(blocks), batch_size):
            chunk = blocks[i : i + batch_size]
            width = max(len(b) for b in chunk)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            input_ids = torch.tensor([b + [pad] * (width - len(b)) for b in chunk])
            mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in chunk])
            labels = input_ids.masked_fill(mask == 0, -100)
            out.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
        return out
    assert data.labels is not None and label_names is not None
    index = {n: i for i, n in enumerate(label_names)}
    unknown = sorted({lbl for lbl in data.labels if lbl not in index})
    if unknown:
        raise ProtectionError(f"Labels {unknown[:5]} do not occur in the training data's labels {list(label_names)}.")
    out = []
    for i in range(0, len(data.texts), batch_size):
        enc = tokenizer(list(data.texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append({**dict(enc), "labels": torch.tensor([index[lbl] for lbl in data.labels[i : i + batch_size]])})
    return out


def split(data: TextData, *, fraction: float, seed: int) -> tuple[TextData, TextData]:
    """Deterministic split into (first, second) with `fraction` of examples (at least one) in the second."""
    import random

    idx = list(range(len(data.texts)))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(len(idx) * fraction)))
    if len(idx) - k < 1:
        raise ProtectionError(f"Only {len(idx)} example(s): too few to split off validation data; add more.")

    def pick(ids: list[int]) -> TextData:
        return TextData(tuple(data.texts[i] for i in ids),
                        tuple(data.labels[i] for i in ids) if data.labels is not None else None, data.label_names)

    return pick(idx[k:]), pick(idx[:k])
