"""`open_model(source)`: a checkpoint bound to its architecture — the one thing lineage reads from.

It hides every step below it (which files transformers would load, headers, the architecture map, reading
plans and byte budgets, canonicalisation) behind four questions lineage asks: which plan fits a budget, the
embedding rows of some token ids, the canonical layers of a plan, and the facts about the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import CorruptCheckpointError
from hubguard.utils import progress
from hubguard.weights.binding import BoundArchitecture, bind_architecture
from hubguard.weights.canonical import CanonicalLayer, LayerReader
from hubguard.weights.plan import (
    LAYER_SHARE,
    ReadPlan,
    embedding_gap,
    plan_reads,
    resolve_budget,
    row_gaps,
    widen_embedding_gap,
)
from hubguard.weights.source import Checkpoint, open_source

if TYPE_CHECKING:
    import torch

    from hubguard.weights.store import ByteStore, ReadStats


@dataclass(frozen=True)
class ModelWeights:
    """An opened checkpoint and its bound architecture map."""

    checkpoint: Checkpoint
    arch: BoundArchitecture

    @property
    def source(self) -> str:
        return self.checkpoint.source

    @property
    def store(self) -> "ByteStore":
        return self.checkpoint.store

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint.config

    @property
    def stats(self) -> "ReadStats":
        return self.checkpoint.stats

    @cached_property
    def reader(self) -> LayerReader:
        return LayerReader(tensors=self.checkpoint.tensors, arch=self.arch)

    @property
    def vocab_rows(self) -> int:
        """Rows of the input embedding (token ids at or above this have no row)."""
        shape = self.checkpoint.tensors.info(self.arch.embedding_name).shape
        return int(shape[0]) if shape else 0

    @property
    def layer_norm(self) -> bool:
        """True for LayerNorm families (their token rows are centred before normalising)."""
        return self.arch.spec.norm.type == "layer"

    def plan(self, *, rows: list[int], layers: list[int] | None = None, max_layers: int | None = None,
             budget: "float | str | None" = "auto") -> ReadPlan:
        """What to read under `budget` (see `hubguard.weights.plan`) when the token rows are `rows`."""
        tensors, emb = self.checkpoint.tensors, self.arch.embedding_name
        total = tensors.total_bytes()
        fraction = resolve_budget(budget, total_bytes=total)

        def replan(gap: int) -> ReadPlan:
            return plan_reads(reader=self.reader, n_layers=self.arch.num_layers, layers=layers, max_layers=max_layers,
                              budget=budget, total_bytes=total, embedding_bytes=tensors.rows_bytes(emb, rows, max_gap=gap),
                              embedding_gap=gap)

        plan = replan(embedding_gap(tensors=tensors, name=emb, rows=rows, budget=fraction, total_bytes=total))
        if fraction is None:
            return plan
        return widen_embedding_gap(plan=plan, gaps=row_gaps(rows, row_bytes=tensors.info(emb).row_bytes), replan=replan,
                                   limit=LAYER_SHARE * fraction * total)

    def embedding_rows(self, rows: list[int], *, plan: ReadPlan) -> "torch.Tensor":
        """[len(rows), hidden] float32 input-embedding rows (projected into the hidden size where the map has an
        embedding projection that the config switches on: ELECTRA normalises first, DeBERTa projects first)."""
        x = self.checkpoint.tensors.get_rows(self.arch.embedding_name, rows, max_gap=plan.embedding_gap)
        if self.arch.embedding_projected and x.dim() == 2:
            x = self._project(x)
        if x.dim() != 2 or x.shape[1] != self.arch.hidden_size:
            raise CorruptCheckpointError(f"'{self.source}': embedding rows are {list(x.shape)[1:]} wide but config.json "
                                         f"says the hidden size is {self.arch.hidden_size}. Fix config.json.")
        return x

    def _project(self, x: "torch.Tensor") -> "torch.Tensor":
        """Embedding rows [n, e] into the hidden size through the map's embedding projection [hidden, e]."""
        spec, reader = self.arch.spec, self.reader
        assert spec.embedding_projection is not None
        w = reader.matrix(spec.embedding_projection, 0)
        if w.shape[1] != x.shape[1]:
            raise CorruptCheckpointError(f"'{self.source}': the embedding projection reads {w.shape[1]} dimensions but "
                                         f"the embeddings are {x.shape[1]} wide. Fix config.json (embedding_size).")
        if spec.projection_after_norm and spec.embedding_norm is not None:  # the embedding norm feeds the projection
            if spec.norm.type == "layer":
                x = x - x.mean(dim=1, keepdim=True)
            x = x / x.pow(2).mean(dim=1, keepdim=True).add(1e-12).sqrt()
            gain = reader.gain(spec.embedding_norm, None)
            if gain is not None:
                if gain.shape != (x.shape[1],):
                    raise CorruptCheckpointError(f"'{self.source}': the embedding norm has shape {list(gain.shape)}; "
                                                 f"the embeddings are {x.shape[1]} wide.")
                x = x * gain
        return x @ w.t()

    def read_layer(self, index: int, *, plan: ReadPlan) -> CanonicalLayer:
        if plan.mode == "qk_heads":
            return self.reader.read_qk_heads(index, kv_heads=plan.kv_heads or 1)
        return self.reader.read(index, with_ffn=plan.mode == "full")

    def layers(self, plan: ReadPlan, *, desc: str | None = None) -> Iterator[CanonicalLayer]:
        """The plan's canonical layers, one at a time (peak memory: one layer), with a progress bar."""
        label = desc or f"read {Path(self.source).name or self.source}"
        for index in progress(list(plan.layers), desc=label, total=len(plan.layers)):
            yield self.read_layer(index, plan=plan)

    def facts(self) -> dict[str, Any]:
        """JSON-ready facts about the model (family, sizes, how its map was chosen, parameter count, revision)."""
        import math

        tensors = self.checkpoint.tensors
        arch = self.arch
        return {
            "source": self.source,
            "family": arch.family,
            "binding": arch.how,
            "model_type": self.config.get("model_type"),
            "architectures": self.config.get("architectures"),
            "num_layers": arch.num_layers,
            "hidden_size": arch.hidden_size,
            "num_heads": arch.num_heads,
            "num_kv_heads": arch.num_kv_heads,
            "head_dim": arch.head_dim,
            "attention": arch.spec.attention.kind,
            "num_experts": arch.num_experts,
            "parameters": sum(math.prod(tensors.info(n).shape) for n in tensors.names()),
            "vocab_size": self.vocab_rows,
            "revision": getattr(self.store, "sha", None) or getattr(self.store, "revision", None),
            "weight_files": list(self.checkpoint.layout.files),
            "shadow_weights": self.checkpoint.shadow,
            "adapter_base": self.checkpoint.base.source if self.checkpoint.base is not None else None,
        }


def bind_model(checkpoint: Checkpoint, *, family: str | None = None) -> ModelWeights:
    """Bind an opened checkpoint to its architecture map (see `hubguard.weights.binding`)."""
    arch = bind_architecture(config=checkpoint.config, tensor_names=checkpoint.tensors.names(),
                             source=checkpoint.source, family=family)
    return ModelWeights(checkpoint=checkpoint, arch=arch)


def open_model(
    source: "str | os.PathLike[str] | Checkpoint",
    *,
    family: str | None = None,
    allow_pickle: bool = False,
    token: str | None = None,
    base: "str | os.PathLike[str] | None" = None,
) -> ModelWeights:
    """Open a folder, a `.safetensors` file or `hf://ORG/NAME[@REV]` and bind it to its architecture map. `base`: where
    a PEFT adapter's base is (default: what adapter_config.json names)."""
    checkpoint = source if isinstance(source, Checkpoint) else open_source(source, allow_pickle=allow_pickle, token=token,
                                                                            base=base)
    return bind_model(checkpoint, family=family)
