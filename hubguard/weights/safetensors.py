"""Read tensors (or just rows of them) from safetensors files in any `ByteStore`.

Headers are untrusted bytes: the 8-byte length is bounded, the JSON is parsed with size and depth limits (no
duplicate keys, no NaN/Infinity, no huge numbers; `hubguard.utils.jsonsafe`) and every field is validated the way
the safetensors library does and then some: `__metadata__` a str->str map; each tensor a known dtype, a shape of
non-negative integers whose byte size matches its `data_offsets`, offsets integers that tile the data section
exactly (no gaps, no overlaps, nothing past the end). Only the bytes of the tensors or rows asked for are read.
Which files are read is decided by `hubguard.weights.files` (what transformers loads); pickles are read by
`hubguard.weights.pickles`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hubguard.constants import SAFETENSORS_MAX_HEADER_BYTES
from hubguard.errors import CorruptCheckpointError, SourceNotFoundError
from hubguard.utils.jsonsafe import loads_untrusted
from hubguard.weights.store import ByteStore, coalesce_ranges
from hubguard.weights.tensors import DTYPE_BITS, TensorInfo, TensorSource, bytes_to_tensor

if TYPE_CHECKING:
    import torch

MAX_RANK = 16
HEADER_DEPTH = 4  # {name: {"shape": [..]}} nests 3 deep
_RESAVE = "The file is corrupt or hostile; re-save it with safetensors (save_pretrained)."


def _int_list(value: Any, *, length: int | None = None) -> list[int] | None:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value


def _entry(name: str, entry: Any, *, where: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, validated."""
    if not isinstance(entry, dict):
        raise CorruptCheckpointError(f"'{where}': the header entry of '{name[:120]}' is not an object. {_RESAVE}")
    dtype, shape, offsets = entry.get("dtype"), _int_list(entry.get("shape")), _int_list(entry.get("data_offsets"), length=2)
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise CorruptCheckpointError(f"'{where}': tensor '{name[:120]}' has dtype {str(dtype)[:40]!r}, which is not a "
                                     f"safetensors dtype ({', '.join(DTYPE_BITS)}). {_RESAVE}")
    if shape is None or len(shape) > MAX_RANK:
        raise CorruptCheckpointError(f"'{where}': tensor '{name[:120]}' has shape {str(entry.get('shape'))[:80]}; a shape "
                                     f"is a list of at most {MAX_RANK} non-negative integers. {_RESAVE}")
    if offsets is None:
        raise CorruptCheckpointError(f"'{where}': tensor '{name[:120]}' has data_offsets "
                                     f"{str(entry.get('data_offsets'))[:80]}; they must be two non-negative integers. "
                                     f"{_RESAVE}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def parse_header(*, store: ByteStore, file: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate the header of one safetensors file. Returns (tensors, __metadata__)."""
    size = store.size(file)
    where = f"{store.name}/{file}"
    if size < 8:
        raise CorruptCheckpointError(f"'{where}' is only {size} bytes: not a safetensors file (truncated?).")
    (n,) = struct.unpack("<Q", store.read_ranges(file, [(0, 8)])[0])
    if n > SAFETENSORS_MAX_HEADER_BYTES:
        raise CorruptCheckpointError(
            f"'{where}' declares a {n}-byte header, above the {SAFETENSORS_MAX_HEADER_BYTES}-byte limit the Hub "
            f"enforces. {_RESAVE}"
        )
    if 8 + n > size:
        raise CorruptCheckpointError(
            f"'{where}' declares a {n}-byte header but the file has {size} bytes (truncated). Re-download it."
        )
    raw = store.read_ranges(file, [(8, 8 + n)])[0].rstrip(b" ")
    header = loads_untrusted(raw, what=f"the header of '{where}'", error=CorruptCheckpointError,
                             max_bytes=SAFETENSORS_MAX_HEADER_BYTES, max_depth=HEADER_DEPTH, fix=_RESAVE)
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"'{where}' has a header that is not a JSON object. {_RESAVE}")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptCheckpointError(f"'{where}': __metadata__ must be an object of strings. {_RESAVE}")
    data_start = 8 + n
    data_len = size - data_start
    entries = [(name, *_entry(name, e, where=where)) for name, e in header.items()]
    tensors: dict[str, TensorInfo] = {}
    expected_start = 0
    for name, dtype, shape, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or end - begin != bits // 8 or begin != expected_start or end > data_len:
            raise CorruptCheckpointError(
                f"'{where}': the header says tensor '{name[:120]}' {list(shape)} {dtype} lies at bytes [{begin}, {end}) "
                f"of a {data_len}-byte data section, which is impossible (it needs {bits / 8:g} bytes, starting at "
                f"byte {expected_start} where the previous tensor ends, inside the file). The file is truncated or its "
                "header lies; re-download or re-save it."
            )
        expected_start = end
        tensors[name] = TensorInfo(file=file, dtype=dtype, shape=shape, start=data_start + begin, stop=data_start + end)
    if expected_start != data_len:
        raise CorruptCheckpointError(
            f"'{where}': its tensors cover {expected_start} of the {data_len} bytes after the header; safetensors "
            "(and transformers) refuse such a file. It is truncated, padded or hostile; re-save it with safetensors."
        )
    return tensors, dict(metadata)


class SafetensorsCheckpoint(TensorSource):
    """The tensors of some safetensors files of a store, by name; reads lazily.

    Args:
        store: where the bytes are.
        files: the files, in load order (a tensor in a later file replaces one of the same name in an earlier one,
            as transformers loads shards). Default: what `hubguard.weights.files.weight_files` decides.
    """

    def __init__(self, *, store: ByteStore, files: Sequence[str] | None = None) -> None:
        self.store = store
        self.name = store.name
        self.metadata: dict[str, str] = {}
        self._infos: dict[str, TensorInfo] = {}
        if files is None:
            from hubguard.weights.files import weight_files

            files = weight_files(store=store).files
        for f in files:
            tensors, meta = parse_header(store=store, file=f)
            self._infos.update(tensors)
            self.metadata.update(meta)
        if not self._infos:
            raise SourceNotFoundError(f"'{store.name}' holds safetensors files ({', '.join(files)}) without any tensor "
                                      "in them. Upload the model's weights.")

    def _read_many(self, names: list[str]) -> dict[str, "torch.Tensor"]:
        """One `read_ranges` call per file, so a remote store can merge neighbouring tensors (a layer's matrices sit
        next to each other) into a few requests and fetch them in parallel."""
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self._infos[n].file, []).append(n)
        for file, group in by_file.items():
            infos = [self._infos[n] for n in group]
            bufs = self.store.read_ranges(file, [(i.start, i.stop) for i in infos])
            for n, i, buf in zip(group, infos, bufs):
                out[n] = bytes_to_tensor(buf, dtype=i.dtype, shape=i.shape, name=n)
        return out

    def _read_rows(self, name: str, rows: list[int], *, max_gap: int) -> "list[tuple[list[int], torch.Tensor]]":
        info = self._infos[name]
        rb = info.row_bytes
        spans = coalesce_ranges([(info.start + r * rb, info.start + (r + 1) * rb) for r in rows], max_gap=max_gap)
        bufs = self.store.read_ranges(info.file, spans)
        blocks = []
        for (s, e), buf in zip(spans, bufs):
            first, count = (s - info.start) // rb, (e - s) // rb
            inside = [r for r in rows if first <= r < first + count]
            blocks.append((inside, bytes_to_tensor(buf, dtype=info.dtype, shape=(count, *info.shape[1:]), name=name,
                                                   rows=[r - first for r in inside])))
        return blocks

