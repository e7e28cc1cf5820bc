"""The hubguard wheel a built Space installs (hubguard is not on the package index, so the Space carries it).

From a source checkout (a `pyproject.toml` naming hubguard beside the package) the wheel is built with pip in a
copy of the tree, so the checkout gets no build folders. From an installed hubguard (a wheel install: the
dist-info lists the files) the installed files are packed back into a wheel with a fresh RECORD. An editable
install without its source tree cannot be packed: the error says to build from the checkout.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hubguard.errors import HubguardError

DIST = "hubguard"
_SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


class WheelError(HubguardError):
    """The hubguard wheel for the Space cannot be made."""

    default_fix = "Run `hubguard space build` from a hubguard source checkout, or from a hubguard installed from its wheel."


def source_tree() -> Path | None:
    """The checkout hubguard is imported from, if it is one."""
    root = Path(__file__).resolve().parents[2]
    project = root / "pyproject.toml"
    if project.is_file() and f'name = "{DIST}"' in project.read_text(encoding="utf-8", errors="replace"):
        return root
    return None


def _copy_tree(root: Path, into: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache", "*.egg-info", "build", "dist")
    into.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, into / name)
    for name in ("hubguard", "registry"):
        if (root / name).is_dir():
            shutil.copytree(root / name, into / name, symlinks=True, ignore=ignore)
    return into


def build_from_source(root: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hubguard-wheel-") as tmp:
        tree = _copy_tree(root, Path(tmp) / "src")
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir), str(tree)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise WheelError(f"Building the hubguard wheel from {root} failed: {(done.stderr or done.stdout).strip()[-800:]}",
                         fix="Install the build backend (pip install setuptools) and retry.")
    wheels = sorted(out_dir.glob(f"{DIST}-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise WheelError(f"pip built no hubguard wheel into {out_dir}.")
    return wheels[-1]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack_installed(out_dir: Path) -> Path:
    """A wheel of the installed hubguard, from the files its dist-info lists."""
    from importlib import metadata

    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as err:
        raise WheelError("hubguard is not installed as a package, and this is no source checkout.") from err
    files = [f for f in (dist.files or []) if not f.name.endswith(".pyc") and "__pycache__" not in f.parts]
    package = [f for f in files if f.parts and f.parts[0] == DIST]
    if not package:
        raise WheelError("The installed hubguard lists no package files (an editable install?); its files cannot be packed.")
    info_dir = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info_dir is None:
        raise WheelError("The installed hubguard has no .dist-info folder to pack.")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{DIST}-{dist.version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            if f.parts[0] == info_dir and f.name in _SKIP_DIST_INFO:
                continue
            if f.parts[0] not in (DIST, info_dir):
                continue  # console scripts and the like: pip writes them at install
            data = Path(dist.locate_file(f)).read_bytes()
            name = "/".join(f.parts)
            zf.writestr(name, data)
            record.append(_record_line(name, data))
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return target


def hubguard_wheel(out_dir: Path) -> Path:
    """Build (from a checkout) or pack (from an install) the hubguard wheel into `out_dir`."""
    root = source_tree()
    return build_from_source(root, out_dir) if root is not None else repack_installed(out_dir)
