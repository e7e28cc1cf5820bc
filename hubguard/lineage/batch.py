"""Distributed batch fingerprinting on Ray.

`fingerprint_many(sources=[...], out_dir=...)` fingerprints every source in its own Ray task. Each task saves
its fingerprint under `out_dir` itself, so the tensors never travel through Ray's object store; the driver only
receives a small JSON-ready summary (or the error) per source. One bad source never fails the batch.

With `address=None` a local Ray runtime is started for the call (and shut down afterwards); `address="auto"`
or `"ray://HOST:10001"` connects to an existing cluster, whose workers must then see the sources and `out_dir`
under the same paths (shared storage). Ray is an optional dependency: `pip install 'hubguard[scale]'`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubguard.errors import FingerprintError, MissingDependencyError
from hubguard.utils import get_logger, progress
from hubguard.utils.names import slug
from hubguard.weights.source import HF_PREFIX

logger = get_logger(__name__)

FP_SUFFIX = ".fp.safetensors"
OBJECT_STORE_BYTES = 128 * 1024**2  # results are small dicts; the object store only needs a little room


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one source of a batch.

    Attributes:
        source: the source as given.
        path: the saved fingerprint file, or None when the source failed.
        ok: True when the fingerprint was computed and saved.
        error: "ErrorType: message" when it failed, else None.
        seconds: time spent on this source inside its task.
        summary: `Fingerprint.summary()` (JSON-ready, no tensors); empty when it failed.
    """

    source: str
    path: Path | None
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "path": None if self.path is None else str(self.path), "ok": self.ok,
                "error": self.error, "seconds": self.seconds, "summary": self.summary}


def output_name(source: str | os.PathLike[str]) -> str:
    """A file-name stem for a source: the folder/file name, or ORG--NAME[--REV] for hf:// repos."""
    spec = os.fspath(source)
    if spec.startswith(HF_PREFIX):
        stem = spec[len(HF_PREFIX):].strip("/").replace("@", "/")  # slug turns each "/" into "--"
    else:
        p = Path(os.path.abspath(spec))
        stem = p.stem if p.suffix in {".safetensors", ".bin", ".pt", ".pth"} else p.name
    try:
        return slug(stem)
    except ValueError:  # no usable character
        return "model"


def output_paths(sources: Sequence[str | os.PathLike[str]], out_dir: Path) -> list[Path]:
    """One distinct file per source; names that collide (case-insensitively) get a hash of their source."""
    stems = [output_name(s) for s in sources]
    keys = [_source_key(s) for s in sources]
    counts: dict[str, set[str]] = {}
    for stem, key in zip(stems, keys):
        counts.setdefault(stem.casefold(), set()).add(key)
    paths: list[Path] = []
    for stem, key in zip(stems, keys):
        if len(counts[stem.casefold()]) > 1:
            stem = f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        paths.append(out_dir / f"{stem}{FP_SUFFIX}")
    return paths


def _source_key(source: str | os.PathLike[str]) -> str:
    spec = os.fspath(source)
    return spec if spec.startswith(HF_PREFIX) else os.path.abspath(spec)


def _fingerprint_one(source: str, path: str, options: dict[str, Any]) -> dict[str, Any]:
    """Runs inside a Ray worker: fingerprint, save, return a small dict (never raises)."""
    start = time.perf_counter()
    try:
        from hubguard.lineage.fingerprint_files import save_fingerprint
        from hubguard.lineage.fingerprints import compute_fingerprint

        fp = compute_fingerprint(source, **options)
        saved = save_fingerprint(fp, path)
        return {"path": str(saved), "summary": fp.summary(), "error": None, "seconds": time.perf_counter() - start}
    except Exception as err:  # noqa: BLE001 - one bad source must not fail the batch; the error is reported
        return {"path": None, "summary": {}, "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}


def import_ray(purpose: str = "Batch fingerprinting") -> Any:
    """The `ray` module, or a MissingDependencyError that says to install the 'scale' extra."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError.for_extra(package="ray", extra="scale", purpose=purpose) from exc
    return ray


def connect_ray(ray: Any, *, address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray unless it is already up; True when this call did so (and must shut it down)."""
    if ray.is_initialized():
        logger.info("reusing the Ray runtime already initialised in this process")
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
    else:
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError, or a missing ray[client] for ray:// addresses
            raise FingerprintError(
                f"Cannot connect to the Ray cluster at {address!r}: {str(exc).rstrip('.')}. Start one with `ray start --head`, "
                "check the address (\"auto\" or ray://HOST:10001), or omit it to run on a local Ray runtime."
            ) from exc
    return True


def _completed(ray: Any, refs: list[Any]) -> Iterator[Any]:
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield from done


def fingerprint_many(
    *,
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    address: str | None = None,
    num_cpus: int | None = None,
    max_layers: int | None = None,
    budget: float | str | None = "auto",
    allow_pickle: bool = False,
    keep_probe: bool = False,
) -> list[BatchItem]:
    """Fingerprint many sources in parallel on Ray; each is saved as `out_dir/<name>.fp.safetensors`.

    Args:
        sources: model folders, `.safetensors` files or `hf://ORG/NAME[@REV]` specs.
        out_dir: folder for the fingerprint files (created if needed; must be shared storage on a cluster).
        address: None starts a local Ray runtime; "auto" or "ray://HOST:PORT" joins an existing cluster. A Ray
            runtime already initialised in this process is reused either way.
        num_cpus: CPUs of the local runtime (default: all); each source uses one. Not allowed with `address`.
        max_layers, budget, allow_pickle, keep_probe: as in `compute_fingerprint`.

    Returns:
        One `BatchItem` per source, in the order of `sources`; failed sources have `ok=False` and `error`.

    Example:
        items = fingerprint_many(sources=["./a", "./b", "hf://org/model"], out_dir="fps")
    """
    sources = list(sources)
    out = _checked_batch_args(sources=sources, out_dir=out_dir, address=address, num_cpus=num_cpus)
    ray = import_ray()
    out.mkdir(parents=True, exist_ok=True)
    paths = output_paths(sources, out)
    options: dict[str, Any] = {"max_layers": max_layers, "budget": budget, "allow_pickle": allow_pickle,
                               "keep_probe": keep_probe}

    started = connect_ray(ray, address=address, num_cpus=num_cpus)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_fingerprint_one)
        refs = [
            task.remote(_source_key(src), str(path), {**options, "name": os.fspath(src)})
            for src, path in zip(sources, paths)
        ]
        results = _collect(ray, refs)
    finally:
        if started:
            ray.shutdown()

    items: list[BatchItem] = []
    for src, res in zip(sources, results):
        items.append(BatchItem(source=os.fspath(src), path=None if res["path"] is None else Path(res["path"]),
                               ok=res["error"] is None, error=res["error"], seconds=round(float(res["seconds"]), 3),
                               summary=res["summary"]))
        if res["error"] is not None:
            logger.info("batch: %s failed: %s", src, res["error"])
    logger.info("batch: %d of %d sources fingerprinted into %s", sum(i.ok for i in items), len(items), out)
    return items


def _checked_batch_args(*, sources: list[Any], out_dir: str | os.PathLike[str], address: str | None,
                        num_cpus: int | None) -> Path:
    """Refuse a batch that cannot run, before Ray starts; returns the absolute output folder."""
    if not sources:
        raise FingerprintError("No sources to fingerprint. Pass at least one model folder, .safetensors file or hf://ORG/NAME.")
    if address is not None and num_cpus is not None:
        raise FingerprintError(
            "num_cpus sizes a local Ray runtime, but address points to an existing cluster that has its own CPUs. "
            "Pass one of them, not both."
        )
    if num_cpus is not None and num_cpus < 1:
        raise FingerprintError(f"num_cpus must be at least 1; got {num_cpus}.")
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise FingerprintError(f"The output folder '{out}' is a file. Pass a folder (it is created if missing).")
    return out


def _collect(ray: Any, refs: list[Any]) -> list[dict[str, Any]]:
    """Each task's result in the order of `refs`, with a progress bar; a dead worker is that source's error.
    On interruption the unfinished tasks are cancelled."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[dict[str, Any] | None] = [None] * len(refs)
    try:
        for ref in progress(_completed(ray, refs), desc="fingerprint batch", total=len(refs)):
            try:
                results[index[ref]] = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died (out of memory, killed, ...)
                results[index[ref]] = {"path": None, "summary": {}, "error": f"{type(err).__name__}: {err}",
                                       "seconds": 0.0}
    except BaseException:
        for ref, res in zip(refs, results):
            if res is None:
                ray.cancel(ref, force=True)
        raise
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
