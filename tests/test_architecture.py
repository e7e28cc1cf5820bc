"""The house's rules: import contracts (import-linter), the public API, and a fast `import hubguard`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    res = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("hubguard", ["fingerprint", "compare", "load_fingerprint", "save_fingerprint", "Registry", "check_upload"]),
        ("hubguard.lineage", ["Comparison", "Fingerprint", "LayerMatch", "compare", "compare_fingerprints",
                              "compute_fingerprint", "fingerprint", "load_fingerprint", "save_fingerprint"]),
        ("hubguard.lineage.verify", ["verify", "verify_many", "layer_provenance", "LayerSource"]),
        ("hubguard.lineage.candidate", ["Candidate", "open_candidate"]),
        ("hubguard.weights", ["Checkpoint", "HubRef", "open_source", "open_model", "ModelWeights"]),
        ("hubguard.registry", ["Entry", "Registry", "SearchResult"]),
        ("hubguard.hooks", ["CheckReport", "Problem", "check_upload", "install_git_hook", "read_declared_lineage",
                            "upload_folder_checked"]),
        ("hubguard.cli", ["app", "main"]),
    ],
)
def test_documented_names_are_importable(module: str, names: list[str]) -> None:
    import importlib

    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lacks {missing}"


def test_import_hubguard_is_fast_and_light() -> None:
    code = "import sys, time; t = time.perf_counter(); import hubguard; print(time.perf_counter() - t); " \
           "print(any(m in sys.modules for m in ('torch', 'gradio', 'ray', 'peft', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT).stdout.split()
    assert out[1] == "False", "import hubguard loaded a heavy dependency"
    assert float(out[0]) < 0.5


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _product_modules() -> list[Path]:
    root = Path(__file__).resolve().parents[1] / "hubguard"
    return sorted(root.rglob("*.py"))


def test_modules_and_functions_stay_small() -> None:
    """No product module over ~450 lines and no function over ~80 (docstrings included): one idea per file."""
    import ast

    too_long = []
    for path in _product_modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}(): {lines} lines")
    assert not too_long, "split these: " + "; ".join(too_long)
