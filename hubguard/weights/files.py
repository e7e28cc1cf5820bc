"""Which files are a model's weights: the ones transformers' `from_pretrained` loads, decided the way it decides.

`weight_files(store=...)` follows transformers 5 (`modeling_utils._get_resolved_checkpoint_files`,
`integrations.peft.maybe_load_adapters`, `distributed.checkpoint.get_distributed_checkpoint_dir`,
`utils.hub.get_checkpoint_shard_files`) and sentence-transformers (`modules.json`), in this order:

1. the folder: a sentence-transformers repo loads its Transformer module from the `path` modules.json gives it
   ("" is the repo root, "0_Transformer" in older saves); any other repo loads from its root (or `subfolder=`);
2. a PEFT adapter (`adapter_config.json` in that folder): transformers loads the base model its
   `base_model_name_or_path` names, then the adapter on top; from a local folder with its own config.json, the
   folder's own weights are the base ("embedded");
3. a local folder holding `shard-NNNNN-model-NNNNN-of-NNNNN.safetensors` files is a distributed (DCP) checkpoint:
   every .safetensors file in it is loaded (from the Hub the usual order applies: DCP is local-only);
4. `transformers_weights` in config.json names the file (a .safetensors file or index) explicitly;
5. else the first file that exists of `PRECEDENCE` (model{.variant}.safetensors, then its index, then
   pytorch_model{.variant}.bin, then its index; `use_safetensors=True` keeps the first two, False the last two);
6. an index loads every shard its weight_map names, in sorted order, each whole: a tensor in a later shard
   replaces one of the same name in an earlier one (weight_map's per-tensor entries are not consulted);
7. config classes with `extra_files` (the `EXTRA_FILES` table, by model_type) load those files too.

A store that is one file (a `.safetensors` path on the command line) is that file, whatever its name. Every
other file in the repo that holds weights (by its suffix) is a shadow: present but not loaded; `WeightFiles.shadow`
names each with the reason, so the check reports them and nothing reads them in place of the real weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hubguard.errors import CorruptCheckpointError, SourceNotFoundError
from hubguard.utils.jsonsafe import loads_untrusted
from hubguard.weights.store import ByteStore, LocalStore

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# transformers' order: (file name before the variant is added, format, is an index)
PRECEDENCE: tuple[tuple[str, str, bool], ...] = (
    (SAFE_WEIGHTS, "safetensors", False),
    (SAFE_INDEX, "safetensors", True),
    (PICKLE_WEIGHTS, "pickle", False),
    (PICKLE_INDEX, "pickle", True),
)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft's load_peft_weights order
MODULES_FILE = "modules.json"
# sentence-transformers module classes that load a transformers model from their folder
ST_TRANSFORMER_CLASSES = ("Transformer", "MLMTransformer")
DCP_SHARD = re.compile(r"^shard-[0-9]{5}-model-[0-9]{5}-of-[0-9]{5}\.safetensors$")
# config classes whose `extra_files` transformers loads beside the weights (transformers 5.24: only jev)
EXTRA_FILES: dict[str, tuple[str, ...]] = {"jev": ("head.safetensors", "readout.safetensors")}
# Suffixes of files that hold weights in some format, and what loads them when transformers does not.
WEIGHT_SUFFIXES: dict[str, str] = {
    ".safetensors": "safetensors weights",
    ".bin": "pickled PyTorch weights",
    ".pt": "pickled PyTorch weights",
    ".pth": "pickled PyTorch weights",
    ".ckpt": "a pickled checkpoint",
    ".pkl": "a pickle",
    ".gguf": "a GGUF file (llama.cpp, Ollama)",
    ".onnx": "an ONNX export",
    ".h5": "TensorFlow/Keras weights (transformers 5 no longer loads them)",
    ".msgpack": "Flax weights (transformers 5 no longer loads them)",
    ".ot": "rust-bert weights",
    ".tflite": "a TFLite export",
    ".mlmodel": "a Core ML export",
    ".npz": "NumPy arrays",
}
_INDEX = re.compile(r"\.(safetensors|bin)\.index(\.[^/]+)?\.json$")
# Pickles the Trainer writes next to checkpoints that are not model weights.
NOT_WEIGHTS = re.compile(r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
_VARIANT = re.compile(r"^(model|pytorch_model)\.(?P<variant>[^/]+?)(-\d{5}-of-\d{5})?\.(safetensors|bin)$"
                      r"|^(model\.safetensors|pytorch_model\.bin)\.index\.(?P<index_variant>[^/]+)\.json$")
MAX_INDEX_BYTES = 64 << 20
MAX_CONFIG_BYTES = 16 << 20
MAX_SMALL_JSON_BYTES = 4 << 20


@dataclass(frozen=True)
class ShadowFile:
    """A file that holds weights but is not what transformers loads (so hubguard did not fingerprint it)."""

    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class AdapterFiles:
    """A PEFT adapter: its config and weights (repo paths) and the base it names."""

    config_file: str
    weights_file: str
    base: str | None  # base_model_name_or_path as adapter_config.json gives it (None when absent)
    embedded: bool  # a local folder with its own config.json: its own weights are the base


@dataclass(frozen=True)
class WeightFiles:
    """What transformers loads from a repo: `files` (repo paths, in load order; a later file's tensor replaces an
    earlier one's), their `format` ("safetensors" | "pickle"; none for an adapter on a remote base), `folder` the
    model is loaded from, why (`how`), the shadows, and the weight files other modules load (`others`)."""

    folder: str
    files: tuple[str, ...]
    format: str | None
    how: str
    index: str | None = None
    shadow: tuple[ShadowFile, ...] = ()
    others: tuple[str, ...] = ()
    adapter: AdapterFiles | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "files": list(self.files), "format": self.format, "how": self.how,
                "index": self.index, "shadow": [s.to_dict() for s in self.shadow], "others": list(self.others),
                "adapter": None if self.adapter is None else {"config": self.adapter.config_file,
                                                              "weights": self.adapter.weights_file,
                                                              "base": self.adapter.base}}


# -- untrusted JSON files ------------------------------------------------------------------------------------


def read_json(store: ByteStore, file: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any] | None:
    """A JSON object file of the store (None if absent), parsed with size and depth limits; anything else is a
    CorruptCheckpointError that names the file."""
    text = store.read_text(file)
    if text is None:
        return None
    where = f"'{store.name}/{file}'"
    value = loads_untrusted(text, what=where, error=CorruptCheckpointError, max_bytes=max_bytes,
                            fix="Replace it with the model's own file.")
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{where} should hold a JSON object, not {type(value).__name__}.")
    return value


def safe_relative(path: Any, *, what: str) -> str:
    """`path` if it is a relative POSIX path that stays inside the repo (no '..', no absolute path, no NUL)."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise CorruptCheckpointError(f"{what} is {str(path)[:120]!r}, which is not a file name inside the repo.")
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts or any(p in ("", ".") for p in path.split("/")):
        raise CorruptCheckpointError(f"{what} is {path[:120]!r}, which points outside the repo folder. transformers "
                                     "would read a file the repo does not hold; hubguard refuses.")
    return path


def read_index(store: ByteStore, file: str) -> list[str]:
    """The shard files (paths relative to the index's folder, sorted) a safetensors or pickle index names."""
    index = read_json(store, file, max_bytes=MAX_INDEX_BYTES)
    assert index is not None
    where = f"'{store.name}/{file}'"
    weight_map, metadata = index.get("weight_map"), index.get("metadata")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(f"{where} has no 'weight_map' object (tensor name -> shard file). Re-save it.")
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"{where} has no 'metadata' object, so transformers cannot load it either. "
                                     "Re-save the model with save_pretrained.")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CorruptCheckpointError(f"{where}: weight_map['{name[:80]}'] is {type(shard).__name__}, not a file name.")
    return sorted({safe_relative(s, what=f"{where}: a shard name") for s in weight_map.values()})


# -- the decision ----------------------------------------------------------------------------------------------


def add_variant(name: str, variant: str | None) -> str:
    """transformers' `_add_variant`: the variant goes before the last suffix (model.fp16.safetensors,
    model.safetensors.index.fp16.json)."""
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _st_folder(store: ByteStore, files: set[str]) -> tuple[str, list[str]]:
    """(the folder of the sentence-transformers Transformer module, the other modules' folders); ("", []) when
    the repo has no modules.json."""
    if MODULES_FILE not in files:
        return "", []
    text = store.read_text(MODULES_FILE)
    where = f"'{store.name}/{MODULES_FILE}'"
    modules = loads_untrusted(text or "", what=where, error=CorruptCheckpointError, max_bytes=MAX_SMALL_JSON_BYTES)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CorruptCheckpointError(f"{where} should be a list of module objects (as sentence-transformers writes it).")
    chosen: str | None = None
    others: list[str] = []
    for m in modules:
        path, kind = m.get("path"), m.get("type")
        if not isinstance(path, str) or not isinstance(kind, str):
            raise CorruptCheckpointError(f"{where}: every module needs a string 'path' and 'type'.")
        path = path.rstrip("/")
        if path:
            safe_relative(path, what=f"{where}: a module path")
        if chosen is None and kind.rsplit(".", 1)[-1] in ST_TRANSFORMER_CLASSES:
            chosen = path
        else:
            others.append(path)
    return (chosen or ""), [o for o in others if o and o != chosen]


def _adapter(store: ByteStore, folder: str, files: set[str], *, local: bool) -> AdapterFiles | None:
    config_file = _join(folder, ADAPTER_CONFIG)
    if config_file not in files:
        return None
    weights = next((_join(folder, w) for w in ADAPTER_WEIGHTS if _join(folder, w) in files), None)
    if weights is None:
        raise SourceNotFoundError(f"'{store.name}' has {config_file} but no {' or '.join(ADAPTER_WEIGHTS)}. Upload the "
                                  "adapter's weights with its config.")
    config = read_json(store, config_file, max_bytes=MAX_SMALL_JSON_BYTES) or {}
    base = config.get("base_model_name_or_path")
    embedded = local and _join(folder, "config.json") in files
    return AdapterFiles(config_file=config_file, weights_file=weights, base=base if isinstance(base, str) and base else None,
                        embedded=embedded)


def _explicit(store: ByteStore, folder: str, files: set[str], config: dict[str, Any]) -> tuple[str, bool] | None:
    """config.json's `transformers_weights`: (repo path, is an index), or None."""
    name = config.get("transformers_weights")
    if name is None:
        return None
    where = f"'{store.name}/{_join(folder, 'config.json')}': transformers_weights"
    name = safe_relative(name, what=where)
    if not name.endswith((".safetensors", ".safetensors.index.json")) and name != "adapter_model.bin":
        raise CorruptCheckpointError(f"{where} is {name!r}, neither a .safetensors file nor an index; transformers "
                                     "refuses to load it. Fix config.json.")
    path = _join(folder, name)
    if path not in files:
        raise SourceNotFoundError(f"{where} names {name!r}, which the repo does not hold; transformers cannot load it.")
    return path, name.endswith(".index.json")


def _loaded(store: ByteStore, folder: str, files: set[str], config: dict[str, Any], *, local: bool,
            variant: str | None, use_safetensors: bool | None) -> tuple[tuple[str, ...], str, str, str | None]:
    """(loaded files, format, how, index) of the model in `folder` (steps 3-7 of the module docstring)."""
    top = sorted(f for f in files if f.rpartition("/")[0] == folder)
    names = {f.rpartition("/")[2] for f in top}
    if local and any(DCP_SHARD.match(n) for n in names):
        loaded = tuple(f for f in top if f.endswith(".safetensors"))
        return loaded, "safetensors", "a distributed (DCP) checkpoint: transformers loads every .safetensors file", None
    explicit = _explicit(store, folder, files, config)
    if explicit is not None:
        path, is_index = explicit
        fmt = "pickle" if path.endswith(".bin") else "safetensors"
        how = f"config.json's transformers_weights names {path}"
        return _with_shards(store, folder, files, path, is_index, fmt, how)
    order = [(add_variant(name, variant), fmt, is_index) for name, fmt, is_index in PRECEDENCE
             if not (use_safetensors is True and fmt != "safetensors") and not (use_safetensors is False and fmt == "safetensors")]
    for name, fmt, is_index in order:
        path = _join(folder, name)
        if path in files:
            how = f"{path}, the first present of transformers' choices ({' > '.join(n for n, _, _ in order)})"
            return _with_shards(store, folder, files, path, is_index, fmt, how)
    wanted = [n for n, _, _ in order]
    raise SourceNotFoundError(
        f"'{store.name}' holds no weights transformers would load: none of {', '.join(wanted)}"
        + (f" in '{folder}/'" if folder else "") + ". Point hubguard at a model folder, a .safetensors file or "
        "hf://ORG/NAME, and upload the weights with save_pretrained's file names."
    )


def _with_shards(store: ByteStore, folder: str, files: set[str], path: str, is_index: bool, fmt: str,
                 how: str) -> tuple[tuple[str, ...], str, str, str | None]:
    if not is_index:
        return (path,), fmt, how, None
    shards = [_join(folder, s) for s in read_index(store, path)]
    missing = [s for s in shards if s not in files]
    if missing:
        raise SourceNotFoundError(f"'{store.name}/{path}' lists shard '{missing[0]}', which is missing"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                  + ". Download or upload every shard.")
    return tuple(shards), fmt, how, path


def _extra(folder: str, files: set[str], config: dict[str, Any]) -> tuple[str, ...]:
    model_type = config.get("model_type")
    extra = EXTRA_FILES.get(model_type, ()) if isinstance(model_type, str) else ()
    return tuple(_join(folder, f) for f in extra if _join(folder, f) in files)


def weight_files(*, store: ByteStore, variant: str | None = None, use_safetensors: bool | None = None,
                 subfolder: str | None = None) -> WeightFiles:
    """The files transformers' `from_pretrained` loads from `store` (see the module docstring), and the shadows."""
    single = store.single_file if isinstance(store, LocalStore) else None
    if single is not None:
        fmt = "safetensors" if single.endswith(".safetensors") else "pickle"
        return WeightFiles(folder="", files=(single,), format=fmt, how=f"the file {single} was named")
    local = isinstance(store, LocalStore)
    files = set(store.list_files())
    if subfolder is not None and subfolder.strip("/"):
        folder, other_modules = safe_relative(subfolder.strip("/"), what="subfolder"), []
    else:
        folder, other_modules = _st_folder(store, files) if subfolder is None else ("", [])
    adapter = _adapter(store, folder, files, local=local)
    config_file = _join(folder, "config.json")
    config = (read_json(store, config_file) if config_file in files else None) or {}
    if adapter is not None and not adapter.embedded:
        loaded: tuple[str, ...] = ()
        fmt, how, index = None, f"a PEFT adapter ({adapter.config_file}): the base it names, with the adapter on top", None
    else:
        loaded, fmt, how, index = _loaded(store, folder, files, config, local=local, variant=variant,
                                          use_safetensors=use_safetensors)
        loaded += tuple(f for f in _extra(folder, files, config) if f not in loaded)
        if adapter is not None:
            how += f"; with the PEFT adapter {adapter.weights_file} on top"
    used = set(loaded) | {index} | ({adapter.config_file, adapter.weights_file} if adapter else set())
    others = tuple(sorted(f for f in files if _is_weights(f) and f not in used
                          and any(f.startswith(o + "/") for o in other_modules)))
    shadow = tuple(_shadow(store, f, folder=folder, loaded=loaded, index=index, adapter=adapter)
                   for f in sorted(files) if _is_weights(f) and f not in used and f not in others)
    return WeightFiles(folder=folder, files=loaded, format=fmt, how=how, index=index, shadow=shadow, others=others,
                       adapter=adapter)


def _is_weights(file: str) -> bool:
    name = file.rpartition("/")[2]
    if NOT_WEIGHTS.match(name):
        return False
    return bool(_INDEX.search(name)) or any(name.endswith(s) for s in WEIGHT_SUFFIXES)


def _shadow(store: ByteStore, file: str, *, folder: str, loaded: tuple[str, ...], index: str | None,
            adapter: AdapterFiles | None) -> ShadowFile:
    """Why `file` holds weights transformers does not load."""
    parent, _, name = file.rpartition("/")
    chosen = index or (loaded[0] if loaded else None)
    if parent != folder:
        where = f"the sub-folder '{parent}/'" if parent else "the repo root"
        return ShadowFile(file, f"in {where}, which the model is not loaded from")
    if adapter is not None and not adapter.embedded:
        return ShadowFile(file, f"transformers loads the base that {adapter.config_file} names and the adapter, not "
                                "this file")
    m = _VARIANT.match(name)
    if m is not None:
        variant = m.group("variant") or m.group("index_variant")
        return ShadowFile(file, f"a variant: transformers loads it only with variant='{variant}'"
                                + (f" (by default it loads {chosen})" if chosen else ""))
    suffix = next((s for s in WEIGHT_SUFFIXES if name.endswith(s)), None)
    if _INDEX.search(name):
        return ShadowFile(file, f"an index transformers does not read ({chosen} comes first)")
    if suffix in (".safetensors", ".bin") and chosen is not None:
        return ShadowFile(file, f"not a file transformers loads (it loads {chosen})")
    return ShadowFile(file, f"{WEIGHT_SUFFIXES.get(suffix or '', 'weights')}, which transformers' from_pretrained does "
                            "not load")
