"""Read tensors (or just rows of them) from safetensors files in any `ByteStore`.

Headers are parsed and validated by us (no trust in offsets or sizes); only the bytes of the tensors or
rows asked for are read. Sharded checkpoints are resolved through `model.safetensors.index.json`.
Pickle checkpoints are never unpickled; `--allow-pickle` reads them with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.constants import PICKLE_SUFFIXES, SAFETENSORS_MAX_HEADER_BYTES
from hubguard.errors import (
    CorruptCheckpointError,
    MissingTensorError,
    SourceNotFoundError,
    UnsafeCheckpointError,
)
from hubguard.weights.store import ByteStore, coalesce_ranges

if TYPE_CHECKING:
    import torch

# safetensors dtype name -> (bytes per element, torch dtype name)
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
}

INDEX_FILE = "model.safetensors.index.json"
# Rows closer than this many bytes are asked for as one range.
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
        return DTYPES[self.dtype][0]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.itemsize if self.shape else self.itemsize


def parse_header(*, store: ByteStore, file: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate the header of one safetensors file. Returns (tensors, __metadata__)."""
    size = store.size(file)
    where = f"{store.name}/{file}"
    if size < 8:
        raise CorruptCheckpointError(f"'{where}' is only {size} bytes: not a safetensors file (truncated?).")
    (n,) = struct.unpack("<Q", store.read_ranges(file, [(0, 8)])[0])
    if n > SAFETENSORS_MAX_HEADER_BYTES:
        raise CorruptCheckpointError(
            f"'{where}' declares a {n}-byte header, above the {SAFETENSORS_MAX_HEADER_BYTES}-byte limit the "
            "Hub enforces. The file is corrupt or hostile; re-save it with safetensors."
        )
    if 8 + n > size:
        raise CorruptCheckpointError(
            f"'{where}' declares a {n}-byte header but the file has {size} bytes (truncated). Re-download it."
        )
    raw = store.read_ranges(file, [(8, 8 + n)])[0]
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" \x00"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"'{where}' has an unreadable header ({err}). Re-save it with safetensors.") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"'{where}' has a header that is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(f"'{where}': header entry for '{name}' is malformed ({err}).") from err
        if dtype not in DTYPES:
            raise CorruptCheckpointError(f"'{where}': tensor '{name}' has unknown dtype '{dtype}'.")
        expected = math.prod(shape) * DTYPES[dtype][0]
        if any(d < 0 for d in shape) or begin < 0 or end - begin != expected or end > data_len:
            raise CorruptCheckpointError(
                f"'{where}': the header says tensor '{name}' {list(shape)} {dtype} lies at bytes "
                f"[{begin}, {end}) of a {data_len}-byte data section, which is impossible (needs {expected} "
                "bytes inside the file). The file is truncated or its header lies; re-download or re-save it."
            )
        tensors[name] = TensorInfo(file=file, dtype=dtype, shape=shape, start=data_start + begin, stop=data_start + end)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _bytes_to_tensor(buf: bytes, *, dtype: str, shape: tuple[int, ...]) -> "torch.Tensor":
    import torch

    tdtype = getattr(torch, DTYPES[dtype][1])
    if not buf:
        return torch.zeros(shape, dtype=torch.float32)
    t = torch.frombuffer(bytearray(buf), dtype=tdtype).reshape(shape)
    return t.to(torch.float32) if t.is_floating_point() or tdtype != torch.bool else t.float()


class SafetensorsCheckpoint:
    """All safetensors weights of one source, indexed by tensor name; reads lazily.

    Args:
        store: where the bytes are.
        allow_pickle: read `.bin`/`.pt` files with `torch.load(weights_only=True)` when no safetensors exist
            (local stores only). Off by default: such files are refused.
    """

    def __init__(self, *, store: ByteStore, allow_pickle: bool = False) -> None:
        self.store = store
        self.metadata: dict[str, str] = {}
        self._tensors: dict[str, TensorInfo] = {}
        self._pickled: dict[str, "torch.Tensor"] | None = None
        files = store.list_files()
        st_files = [f for f in files if f.endswith(".safetensors")]
        if INDEX_FILE in files:
            self._load_index(files)
        elif st_files:
            # Prefer top-level weights (adapters or sub-folders may hold other safetensors).
            top = [f for f in st_files if "/" not in f] or st_files
            for f in top:
                tensors, meta = parse_header(store=store, file=f)
                self._tensors.update(tensors)
                self.metadata.update(meta)
        else:
            pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
            if pickles and not allow_pickle:
                raise UnsafeCheckpointError(
                    f"'{store.name}' has only pickle checkpoints ({', '.join(pickles[:3])}). hubguard never unpickles "
                    "files it did not write. Convert them to safetensors first, e.g. "
                    "`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('DIR')"
                    ".save_pretrained('DIR-st', safe_serialization=True)\"` on a machine you trust, or pass "
                    "--allow-pickle to read them with torch.load(weights_only=True)."
                )
            if pickles:
                self._load_pickles(pickles)
            else:
                raise SourceNotFoundError(
                    f"'{store.name}' holds no weights (no *.safetensors, no {INDEX_FILE}). Point hubguard at a "
                    "model folder, a .safetensors file or hf://ORG/NAME."
                )
        if not self._tensors and not self._pickled:
            raise SourceNotFoundError(f"'{store.name}' holds safetensors files without any tensor in them.")

    # -- loading -------------------------------------------------------------------------------------

    def _load_index(self, files: list[str]) -> None:
        text = self.store.read_text(INDEX_FILE)
        try:
            index = json.loads(text or "")
            weight_map: dict[str, str] = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(
                f"'{self.store.name}/{INDEX_FILE}' is not a valid safetensors index ({err}). Re-download it."
            ) from err
        headers: dict[str, dict[str, TensorInfo]] = {}
        for shard in sorted(set(weight_map.values())):
            if shard not in files:
                raise SourceNotFoundError(
                    f"'{self.store.name}/{INDEX_FILE}' lists shard '{shard}', which is missing. Download every shard."
                )
            headers[shard], meta = parse_header(store=self.store, file=shard)
            self.metadata.update(meta)
        for name, shard in weight_map.items():
            info = headers[shard].get(name)
            if info is None:
                raise CorruptCheckpointError(
                    f"'{self.store.name}/{INDEX_FILE}' says '{name}' is in '{shard}', but that shard does not hold it."
                )
            self._tensors[name] = info

    def _load_pickles(self, pickles: list[str]) -> None:
        import torch

        from hubguard.weights.store import LocalStore

        if not isinstance(self.store, LocalStore):
            raise UnsafeCheckpointError(f"'{self.store.name}': pickle checkpoints are only read from local folders.")
        self._pickled = {}
        for f in pickles:
            try:
                state = torch.load(self.store.root / f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # torch raises many types for a refused or broken pickle
                raise UnsafeCheckpointError(
                    f"'{self.store.name}/{f}' could not be read with torch.load(weights_only=True): {err}. "
                    "Convert it to safetensors on a trusted machine."
                ) from err
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise CorruptCheckpointError(f"'{self.store.name}/{f}' does not hold a state dict.")
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    self._pickled[k] = v
                    self._tensors[k] = TensorInfo(file=f, dtype="F32", shape=tuple(v.shape), start=0, stop=0)

    # -- queries -------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise MissingTensorError(
                f"'{self.store.name}' has no tensor '{name}', which its architecture map requires. The checkpoint is "
                "incomplete, or the architecture JSON does not fit it."
            ) from None

    def total_bytes(self) -> int:
        return sum(t.stop - t.start for t in self._tensors.values())

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, name: str) -> "torch.Tensor":
        """The whole tensor, as float32."""
        info = self.info(name)
        if self._pickled is not None and name in self._pickled:
            return self._check(name, self._pickled[name].float())
        buf = self.store.read_ranges(info.file, [(info.start, info.stop)])[0]
        return self._check(name, _bytes_to_tensor(buf, dtype=info.dtype, shape=info.shape))

    def get_many(self, names: Sequence[str]) -> dict[str, "torch.Tensor"]:
        """Several whole tensors, as float32, fetched with one `read_ranges` call per file.

        One call lets a remote store merge neighbouring tensors (a layer's matrices sit next to each other in
        the file) into a few requests and fetch them in parallel.
        """
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for name in dict.fromkeys(names):
            info = self.info(name)
            if self._pickled is not None and name in self._pickled:
                out[name] = self.get(name)
            else:
                by_file.setdefault(info.file, []).append(name)
        for file, group in by_file.items():
            infos = [self.info(n) for n in group]
            bufs = self.store.read_ranges(file, [(i.start, i.stop) for i in infos])
            for n, i, buf in zip(group, infos, bufs):
                out[n] = self._check(n, _bytes_to_tensor(buf, dtype=i.dtype, shape=i.shape))
        return out

    def rows_bytes(self, name: str, rows: Sequence[int], *, max_gap: int = DEFAULT_MAX_GAP) -> int:
        """Bytes `get_rows(name, rows, max_gap=...)` reads (for reading-budget plans)."""
        info = self.info(name)
        rb = info.row_bytes
        spans = coalesce_ranges([(r * rb, (r + 1) * rb) for r in set(rows)], max_gap=max_gap)
        return sum(e - s for s, e in spans)

    def get_rows(self, name: str, rows: Sequence[int], *, max_gap: int = DEFAULT_MAX_GAP) -> "torch.Tensor":
        """Rows `rows` (first-axis indices, any order, repeats allowed) of a tensor, as float32.

        Nearby rows are read together; only those bytes are fetched.
        """
        import torch

        info = self.info(name)
        if not info.shape:
            raise MissingTensorError(f"'{name}' is a scalar; it has no rows.")
        n_rows = info.shape[0]
        bad = [r for r in rows if not 0 <= r < n_rows]
        if bad:
            raise MissingTensorError(f"'{name}' has {n_rows} rows; rows {bad[:5]} do not exist.")
        if self._pickled is not None and name in self._pickled:
            return self._check(name, self._pickled[name][list(rows)].float())
        rb = info.row_bytes
        wanted = sorted(set(rows))
        spans = coalesce_ranges([(info.start + r * rb, info.start + (r + 1) * rb) for r in wanted], max_gap=max_gap)
        bufs = self.store.read_ranges(info.file, spans)
        row_shape = info.shape[1:]
        by_row: dict[int, "torch.Tensor"] = {}
        for (s, e), buf in zip(spans, bufs):
            first = (s - info.start) // rb
            block = _bytes_to_tensor(buf, dtype=info.dtype, shape=((e - s) // rb, *row_shape))
            for r in wanted:
                if first <= r < first + block.shape[0]:
                    by_row[r] = block[r - first]
        out = torch.stack([by_row[r] for r in rows]) if rows else torch.zeros((0, *row_shape))
        return self._check(name, out)

    @staticmethod
    def _check(name: str, t: "torch.Tensor") -> "torch.Tensor":
        import torch

        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CorruptCheckpointError(
                f"Tensor '{name}' holds NaN or Inf values, so no fingerprint can be computed from it. The checkpoint "
                "is broken (a failed training run or a bad conversion)."
            )
        return t


def read_json(store: ByteStore, file: str) -> dict[str, Any] | None:
    """A JSON file of the store, or None if absent; malformed JSON is a clear error."""
    text = store.read_text(file)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"'{store.name}/{file}' is not valid JSON ({err}). Fix or re-download it.") from err
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"'{store.name}/{file}' should hold a JSON object.")
    return value
