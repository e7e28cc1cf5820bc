"""Offline text-classification tasks for benchmarks/protect.py, built from text that ships with Debian/Python.

Every task: (text, label) examples as ~40-word windows, split deterministically into train/val/test.
- licence:       which licence a paragraph comes from (/usr/share/common-licenses)
- man_section:   which section an English man page is from (/usr/share/man/man{1,2,3,5,7,8})
- man_language:  which language a translated man page is in (/usr/share/man/{de,fr,es,it,pl,pt_BR}/man1)
- code_language: which language a source snippet is in (Python stdlib, C headers, Perl modules, shell scripts)
"""

from __future__ import annotations

import gzip
import random
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WORDS = 40


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def _windows(text: str, *, words: int = WORDS) -> Iterator[str]:
    tokens = text.split()
    for i in range(0, len(tokens) - words // 2, words):
        chunk = tokens[i : i + words]
        if len(chunk) >= words // 2:
            yield " ".join(chunk)


_TROFF = re.compile(r"\\f[BIRP]|\\\(..|\\[-&e|^ ]|\\s[+-]?\d|\\\*.")


def _man_text(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                raw = fh.read()
        else:
            raw = path.read_text(encoding="utf-8", errors="replace")
    except (OSError, EOFError):
        return ""
    lines = [_TROFF.sub("", ln) for ln in raw.splitlines() if ln and not ln.startswith((".", "'", '\\"'))]
    return " ".join(lines)


def _per_class(sources: dict[str, list[Path]], reader, *, per_class: int, rng: random.Random) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cls, files in sources.items():
        files = sorted(files)
        rng.shuffle(files)
        got: list[str] = []
        for f in files:
            got.extend(list(_windows(reader(f)))[:4])  # at most 4 windows per file: many files per class
            if len(got) >= per_class:
                break
        out[cls] = got[:per_class]
    return out


def _split(name: str, texts: dict[str, list[str]], *, n: tuple[int, int, int], rng: random.Random) -> Task:
    classes = tuple(sorted(c for c, t in texts.items() if len(t) >= 12))
    parts: list[list[tuple[str, int]]] = [[], [], []]
    for label, cls in enumerate(classes):
        items = list(texts[cls])
        rng.shuffle(items)
        k = len(items)
        a, b = int(k * n[0] / sum(n)), int(k * (n[0] + n[1]) / sum(n))
        for part, chunk in zip(parts, (items[:a], items[a:b], items[b:]), strict=True):
            part.extend((t, label) for t in chunk)
    for part in parts:
        rng.shuffle(part)
    return Task(name, classes, tuple(parts[0][: n[0]]), tuple(parts[1][: n[1]]), tuple(parts[2][: n[2]]))


def build_tasks(*, n_train: int, n_val: int, n_test: int, seed: int = 0) -> list[Task]:
    rng = random.Random(seed)
    total = n_train + n_val + n_test
    tasks = []

    lic = Path("/usr/share/common-licenses")
    names = ["Apache-2.0", "GPL-3", "MPL-2.0", "Artistic", "GFDL-1.3", "LGPL-2.1"]
    texts = {}
    for nm in names:
        if (lic / nm).exists():
            paras = [p for p in re.split(r"\n\s*\n", (lic / nm).read_text(errors="replace")) if len(p.split()) > 15]
            texts[nm] = [w for p in paras for w in _windows(p, words=30)] or []
    k = total // max(1, len(texts)) + 1
    tasks.append(_split("licence", {c: t[:k] for c, t in texts.items()}, n=(n_train, n_val, n_test), rng=rng))

    man = Path("/usr/share/man")
    per = total // 6 + 1
    sections = {f"man{s}": list((man / f"man{s}").glob("*")) for s in "123578"}
    tasks.append(_split("man_section", _per_class(sections, _man_text, per_class=per, rng=rng),
                        n=(n_train, n_val, n_test), rng=rng))

    langs = {lang: list((man / lang / "man1").glob("*")) for lang in ("de", "fr", "es", "it", "pl", "pt_BR")}
    tasks.append(_split("man_language", _per_class(langs, _man_text, per_class=per, rng=rng),
                        n=(n_train, n_val, n_test), rng=rng))

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shell = [p for p in Path("/usr/bin").iterdir() if p.is_file() and _is_shell(p)]
    code = {
        "python": list(stdlib.glob("*.py")),
        "c": list(Path("/usr/include").glob("*.h")),
        "perl": list(Path("/usr/share/perl5").rglob("*.pm")),
        "shell": shell,
    }
    per = total // 4 + 1
    tasks.append(_split("code_language", _per_class(code, lambda p: p.read_text(errors="replace"), per_class=per,
                                                    rng=rng), n=(n_train, n_val, n_test), rng=rng))
    return tasks


def _is_shell(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    return head.startswith((b"#!/bin/sh", b"#! /bin/sh", b"#!/bin/bash", b"#!/usr/bin/env bash"))


if __name__ == "__main__":
    for t in build_tasks(n_train=int(sys.argv[1]) if len(sys.argv) > 1 else 320, n_val=96, n_test=160):
        print(t.name, t.classes, len(t.train), len(t.val), len(t.test), t.train[0][0][:80])
