"""What every tensor source answers: where a tensor is (`TensorInfo`), the whole tensor, rows of it, and bytes.

Three sources implement `TensorSource`: safetensors files in a byte store (`hubguard.weights.safetensors`), a
pickled state dict read with `torch.load(weights_only=True)` (`hubguard.weights.pickles`), and a base model with
a LoRA adapter on top (`hubguard.weights.adapters`). Everything above (canonical layers, reading plans,
embedding rows) reads through this interface only, so head slices and token rows work the same on all three.

Every float tensor handed out is checked: NaN or Inf values are a `DegenerateWeightsError` naming the tensor.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubguard.errors import DegenerateWeightsError, FingerprintError, MissingTensorError
from hubguard.weights.store import coalesce_ranges

if TYPE_CHECKING:
    import torch

# safetensors dtype name -> bits per element (every dtype the safetensors format defines, so any valid header
# parses and its layout can be checked)
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
# the dtypes hubguard turns into float32 tensors: safetensors name -> torch dtype name
TORCH_DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
DEFAULT_MAX_GAP = 0  # exact rows; stores coalesce as suits them (remote stores merge nearby ranges)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range in the file."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in the file
    stop: int

    @property
    def itemsize(self) -> int:
        """Bytes per element (sub-byte dtypes count as one byte; they are never read row by row)."""
        return max(1, DTYPE_BITS[self.dtype] // 8)

    @property
    def nbytes(self) -> int:
        return self.stop - self.start

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.itemsize if self.shape else self.itemsize


def bytes_to_tensor(buf: bytes, *, dtype: str, shape: tuple[int, ...], name: str,
                    rows: "list[int] | None" = None) -> "torch.Tensor":
    """float32 tensor from raw little-endian bytes (booleans and integers are converted to float32 too); with
    `rows`, only those first-axis rows (converted after selecting them, so a wide window costs no float copy)."""
    import torch

    if dtype not in TORCH_DTYPES:
        raise FingerprintError(f"Tensor '{name}' is stored as {dtype}, which hubguard cannot read as numbers (it reads "
                               f"{', '.join(sorted(TORCH_DTYPES))}).",
                               fix="Save the model's weights in bf16, fp16 or fp32 (dequantize it first).")
    if not buf:
        return torch.zeros(shape if rows is None else (len(rows), *shape[1:]), dtype=torch.float32)
    t = torch.frombuffer(bytearray(buf), dtype=getattr(torch, TORCH_DTYPES[dtype])).reshape(shape)
    picked = t if rows is None else t[rows]
    return bfloat16_to_float32(picked) if picked.dtype == torch.bfloat16 else picked.to(torch.float32)


def bfloat16_to_float32(t: "torch.Tensor") -> "torch.Tensor":
    """bfloat16 widened to float32, bit for bit: a bfloat16 is the upper half of a float32, so on a little-endian
    machine widening is a copy into the high 16 bits of zeroed words (about 3x less CPU than `.to(float32)`)."""
    import torch

    if sys.byteorder != "little":
        return t.to(torch.float32)
    words = torch.zeros(t.numel() * 2, dtype=torch.int16)
    words[1::2] = t.reshape(-1).view(torch.int16)
    return words.view(torch.float32).reshape(t.shape)


def check_finite(name: str, t: "torch.Tensor") -> "torch.Tensor":
    """`t`, after checking it holds no NaN or Inf (else DegenerateWeightsError naming the tensor)."""
    import torch

    if t.is_floating_point() and t.numel() and not all(bool(torch.isfinite(e)) for e in torch.aminmax(t)):  # NaN propagates
        raise DegenerateWeightsError(
            f"Tensor '{name}' holds NaN or Inf values (in float32), so no fingerprint can be computed from it. The "
            "checkpoint is broken (a failed training run, a bad conversion, or values beyond float32's range)."
        )
    return t


class TensorSource:
    """The interface lineage reads weights through. Subclasses fill `_infos` (or override `names`/`info`) and
    implement `_read_many`/`_read_rows`; `get`, `get_many`, `get_rows` and the byte counts are shared."""

    name: str  # where the tensors are, for messages
    metadata: dict[str, str]
    _infos: dict[str, TensorInfo]

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise self.missing(name) from None

    def _read_many(self, names: list[str]) -> dict[str, "torch.Tensor"]:
        """Whole tensors (float32, unchecked)."""
        raise NotImplementedError

    def _read_rows(self, name: str, rows: list[int], *, max_gap: int) -> "list[tuple[list[int], torch.Tensor]]":
        """The distinct, sorted `rows` of a tensor (float32, unchecked) as blocks made for this call (no cache or
        loaded state holds them): each the row indices it covers, in order, and their [k, ...] tensor."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------

    def missing(self, name: str) -> MissingTensorError:
        return MissingTensorError(
            f"'{self.name}' has no tensor '{name}', which its architecture map requires. The checkpoint is "
            "incomplete, or the architecture JSON does not fit it."
        )

    def total_bytes(self) -> int:
        return sum(self.info(n).nbytes for n in self.names())

    def get(self, name: str) -> "torch.Tensor":
        """The whole tensor, as float32."""
        return self.get_many([name])[name]

    def get_many(self, names: Sequence[str]) -> dict[str, "torch.Tensor"]:
        """Several whole tensors, as float32 (sources batch the reads: one call per file)."""
        wanted = list(dict.fromkeys(names))
        for n in wanted:
            self.info(n)
        got = self._read_many(wanted)
        return {n: check_finite(n, got[n]) for n in wanted}

    def rows_bytes(self, name: str, rows: Sequence[int], *, max_gap: int = DEFAULT_MAX_GAP) -> int:
        """Bytes `get_rows(name, rows, max_gap=...)` reads (for reading-budget plans)."""
        rb = self.info(name).row_bytes
        spans = coalesce_ranges([(r * rb, (r + 1) * rb) for r in set(rows)], max_gap=max_gap)
        return sum(e - s for s, e in spans)

    def get_rows(self, name: str, rows: Sequence[int], *, max_gap: int = DEFAULT_MAX_GAP) -> "torch.Tensor":
        """Rows `rows` (first-axis indices, any order, repeats allowed) of a tensor, as float32. Only those bytes
        (and gaps up to `max_gap` between them) are read."""
        import torch

        info = self.info(name)
        if not info.shape:
            raise MissingTensorError(f"'{name}' is a scalar; it has no rows.")
        n_rows = info.shape[0]
        bad = [r for r in rows if not 0 <= r < n_rows]
        if bad:
            raise MissingTensorError(f"'{name}' has {n_rows} rows; rows {bad[:5]} do not exist.")
        if not rows:
            return torch.zeros((0, *info.shape[1:]))
        ordered = sorted(set(rows))
        blocks = self._read_rows(name, ordered, max_gap=max_gap)
        if len(blocks) == 1 and list(rows) == ordered:  # one read, rows in order: the block as it is, no copy
            return check_finite(name, blocks[0][1])
        by_row = {r: row for ids, block in blocks for r, row in zip(ids, block)}
        return check_finite(name, torch.stack([by_row[r] for r in rows]))
