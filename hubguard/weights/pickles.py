"""Pickled PyTorch weights (`pytorch_model.bin` and its shards), read only when asked, never by plain unpickling.

hubguard never runs a pickle's code: files are read with `torch.load(weights_only=True)`, whose unpickler only
rebuilds tensors, containers and primitive types and refuses anything else (a `__reduce__` payload is an error,
never a call). Both of `torch.save`'s formats are read: the zip format memory-mapped, the legacy (non-zip) format
whole, as transformers' own `load_state_dict` does. Only local files are read: over `hf://` a pickle would have to
be downloaded whole, so it is refused with what to do instead.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hubguard.errors import CorruptCheckpointError, UnsafeCheckpointError
from hubguard.utils import get_logger
from hubguard.weights.store import ByteStore, LocalStore
from hubguard.weights.tensors import TensorInfo, TensorSource

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)

_SAFETENSORS_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
                      "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
CONVERT_HINT = (
    "Convert them to safetensors on a machine you trust, e.g. `python -c \"from transformers import AutoModel; "
    "AutoModel.from_pretrained('DIR').save_pretrained('DIR-st')\"`, or pass --allow-pickle (allow_pickle=True) to "
    "read them with torch.load(weights_only=True)."
)


def refuse_pickles(*, store: ByteStore, files: Sequence[str]) -> UnsafeCheckpointError:
    """The error for pickle-only weights read without allow_pickle."""
    return UnsafeCheckpointError(
        f"'{store.name}' has only pickle checkpoints ({', '.join(files[:3])}). hubguard never unpickles files it did "
        f"not write. {CONVERT_HINT}",
        fix=CONVERT_HINT,
    )


def load_state_dict(*, store: LocalStore, file: str) -> "dict[str, torch.Tensor]":
    """The tensors of one pickled state dict, read with torch.load(weights_only=True)."""
    import torch

    path = store.path(file)
    where = f"{store.name}/{file}" if store.single_file is None else store.name
    try:
        mmap = zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a refused or broken pickle
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"'{where}' could not be read with torch.load(weights_only=True), which refuses anything but tensors: "
            f"{first}. Its code was not run. Convert it to safetensors on a machine you trust.",
            fix="Convert the file to safetensors on a machine you trust (save_pretrained), then check that folder.",
        ) from None
    if not isinstance(state, dict) or not state:
        raise CorruptCheckpointError(f"'{where}' holds a {type(state).__name__}, not a state dict (tensor name -> "
                                     "tensor) that transformers could load. Re-save the model with save_pretrained.")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CorruptCheckpointError(f"'{where}' holds no tensors under string names (a nested checkpoint?); "
                                     "transformers would load nothing from it. Re-save the model with save_pretrained.")
    return tensors


class PickleCheckpoint(TensorSource):
    """The tensors of pickled state-dict files (in load order: a later file's tensor replaces an earlier one's)."""

    def __init__(self, *, store: ByteStore, files: Sequence[str]) -> None:
        if not isinstance(store, LocalStore):
            raise UnsafeCheckpointError(
                f"'{store.name}' has pickle weights ({', '.join(files[:3])}); hubguard reads pickles only from local "
                "folders (over hf:// they would be downloaded whole). Download the repo and check the folder with "
                "--allow-pickle, or convert the weights to safetensors.",
                fix="Download the repo (hf download ORG/NAME --local-dir DIR) and run the check on DIR with --allow-pickle.",
            )
        self.store = store
        self.name = store.name
        self.metadata: dict[str, str] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._infos: dict[str, TensorInfo] = {}
        for f in files:
            for k, v in load_state_dict(store=store, file=f).items():
                dtype = _SAFETENSORS_NAMES.get(str(v.dtype).removeprefix("torch."))
                if dtype is None:
                    raise CorruptCheckpointError(f"'{store.name}/{f}': tensor '{k[:120]}' has dtype {v.dtype}, which "
                                                 "hubguard does not read.")
                self._tensors[k] = v
                self._infos[k] = TensorInfo(file=f, dtype=dtype, shape=tuple(v.shape), start=0,
                                            stop=v.numel() * v.element_size())
        logger.info("read %d tensors from pickles %s with torch.load(weights_only=True)", len(self._tensors), list(files))

    def _read_many(self, names: list[str]) -> "dict[str, torch.Tensor]":
        return {n: self._tensors[n].float() for n in names}

    def _read_rows(self, name: str, rows: list[int], *, max_gap: int) -> "list[tuple[list[int], torch.Tensor]]":
        block = self._tensors[name][rows].float()
        return [(rows, block)]
