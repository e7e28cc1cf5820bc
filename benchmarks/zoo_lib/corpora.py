"""Real text that ships with Python or Debian, split into disjoint corpora.

- ``pretrain``: the Python documentation (``pydoc_data.topics``) and the docstrings of the standard library.
- ``licenses``: ``/usr/share/common-licenses/*`` and Debian ``copyright`` files (supervised fine-tuning).
- ``debian``: Debian changelogs and READMEs under ``/usr/share/doc`` (second fine-tune, LoRA, vocab extension).
- ``man``: English man pages with the roff markup stripped (continued pre-training; large).

Every list of files is sorted and capped, so the text is deterministic on a given machine. Corpora are cached
as plain UTF-8 files in a cache folder together with their sha256 (recorded in the zoo manifest).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

CORPUS_NAMES = ("pretrain", "licenses", "debian", "man")
# Caps in characters; the pretraining corpus is the biggest on purpose (bases must really learn).
_CAPS = {"pretrain": 6_000_000, "licenses": 1_500_000, "debian": 3_000_000, "man": 6_000_000}
_QUICK_CAPS = {"pretrain": 600_000, "licenses": 200_000, "debian": 300_000, "man": 600_000}


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str
    sha256: str
    n_chars: int


def _read_text(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return ""
    return raw.decode("utf-8", errors="ignore")


def _pretrain_text(cap: int) -> str:
    import pydoc_data.topics as topics

    parts = [topics.topics[k] for k in sorted(topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = sum(len(p) for p in parts)
    for path in sorted(stdlib.rglob("*.py")):
        if total >= cap:
            break
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    parts.append(doc)
                    total += len(doc)
    return "\n\n".join(parts)


def _licenses_text(cap: int) -> str:
    files = sorted(p for p in Path("/usr/share/common-licenses").iterdir() if p.is_file())
    files += sorted(Path("/usr/share/doc").glob("*/copyright"))
    return _join(files, cap)


def _debian_text(cap: int) -> str:
    doc = Path("/usr/share/doc")
    files = sorted(doc.glob("*/changelog.Debian.gz")) + sorted(doc.glob("*/README*"))
    return _join(files, cap)


_ROFF_REQUEST = re.compile(r"^\.(\S+)\s?(.*)$")
_ROFF_ESCAPE = re.compile(r"\\s[-+]?\d|\\f[BIRP]|\\f\(..|\\f\[[^\]]*\]|\\\*\(..|\\\*.|\\\(..|\\[&|^/,%]")


def _strip_roff(src: str) -> str:
    out = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        m = _ROFF_REQUEST.match(line)
        if m:
            req, rest = m.group(1), m.group(2)
            if req in {"SH", "SS", "B", "I", "BR", "IR", "RB", "BI", "IB", "RI"} and rest:
                line = rest.replace('"', "")
            else:
                continue
        line = _ROFF_ESCAPE.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        if line.strip():
            out.append(line)
    return "\n".join(out)


def _man_text(cap: int) -> str:
    parts, total = [], 0
    for section in ("man1", "man5", "man8", "man7", "man3"):
        for path in sorted(Path("/usr/share/man", section).glob("*.gz")):
            if total >= cap:
                return "\n\n".join(parts)
            text = _strip_roff(_read_text(path))
            if len(text) > 200:
                parts.append(text)
                total += len(text)
    return "\n\n".join(parts)


def _join(files: list[Path], cap: int) -> str:
    parts, total = [], 0
    for path in files:
        if total >= cap:
            break
        text = _read_text(path)
        if text.strip():
            parts.append(text)
            total += len(text)
    return "\n\n".join(parts)


_BUILDERS = {"pretrain": _pretrain_text, "licenses": _licenses_text, "debian": _debian_text, "man": _man_text}


def load_corpus(*, name: str, cache_dir: Path, quick: bool) -> Corpus:
    """Build (or read back from ``cache_dir``) one corpus."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPUS_NAMES)}")
    cap = (_QUICK_CAPS if quick else _CAPS)[name]
    path = cache_dir / f"corpus-{name}-{cap}.txt"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = _BUILDERS[name](cap)[:cap]
        if len(text) < 10_000:
            raise RuntimeError(f"corpus {name!r} has only {len(text)} characters: the system text files are missing")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(path)
    return Corpus(name=name, text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), n_chars=len(text))
