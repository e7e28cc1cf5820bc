"""Offline text-classification tasks for benchmarks/protect.py: a frozen snapshot plus the builder that made it.

The tasks are read from the committed snapshot benchmarks/data/protect_tasks_v2.jsonl.gz (gzip, JSON lines: a
header object, then one {"task", "split", "label", "text"} record per line; the header's "snapshot" is 2). `python protect_tasks.py freeze`
rebuilds it from text that ships with Debian; `python protect_tasks.py` prints a summary. The snapshot is frozen
because the machine's text changes whenever a package is installed or upgraded: reading it at run time made the
benchmark's numbers drift between machines and over time. Re-freezing gives a new snapshot, not the same one.

Tasks (TASKS order), each ~40-word whitespace windows:
- man_section:    section 1/2/3/5/7/8 of an English man page, /usr/share/man/man* (manpages, manpages-dev,
                  coreutils, util-linux, systemd, git-man, openssl, ...; google-cloud-cli's gcloud* pages left out)
- man_language:   language of a translated man page, /usr/share/man/{de,fr,nl,pt,sv,uk}/man* (translations
                  shipped by dpkg, dpkg-dev, man-db, procps, psmisc, passwd, apt, ...)
- code_language:  python (/usr/lib/python3.11/*.py, libpython3.11-stdlib), c (/usr/include/*.h, libc6-dev and
                  other -dev packages), perl (*.pm: perl-modules-5.36, libdpkg-perl, debconf, ...), shell (sh/bash
                  scripts in /usr/bin)
- python_package: which stdlib package a source window is from, /usr/lib/python3.11/<pkg> without test dirs
                  (libpython3.11-stdlib; distutils from python3-distutils; snapshot 1's importlib has too little
                  text for 1500 test windows, lib2to3 replaces it)
- doc_kind:       Debian changelog / copyright / README* / upstream changelog or NEWS, /usr/share/doc/<pkg>

Splits (snapshot 2): 1200 train / 600 val / 1500 test per task, class-balanced (snapshot 1 had up to 1000 / 200 /
400, too few test examples to resolve one point: the standard error of an accuracy near 80% on 400 examples is
2 points, on 1500 it is 1.0, and a paired difference of two models on the same 1500 examples about 0.5), classes interleaved so every prefix is close to
balanced (the loader returns prefixes). No leakage: all windows of a source file go to one split, and a task keeps no window whose 6-word shingles
were more than half seen already in it (no exact or near duplicates, within or across classes and splits).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_VERSION = 2
SNAPSHOT = Path(__file__).resolve().parent / "data" / f"protect_tasks_v{SNAPSHOT_VERSION}.jsonl.gz"
KIND, SCHEMA_VERSION = "hubguard-protect-tasks", 1
TASKS = ("man_section", "man_language", "code_language", "python_package", "doc_kind")
SIZES = {"train": 1200, "val": 600, "test": 1500}
WINDOW = 40  # window length in words
PER_FILE = 6  # windows per source file, raised for classes with few files

MAN, DOC, PY = Path("/usr/share/man"), Path("/usr/share/doc"), Path("/usr/lib/python3.11")
LANGUAGES = ("de", "fr", "nl", "pt", "sv", "uk")
PACKAGES = ("asyncio", "distutils", "email", "lib2to3", "multiprocessing", "xml")
SHEBANGS = (b"#!/bin/sh", b"#! /bin/sh", b"#!/bin/bash", b"#! /bin/bash", b"#!/usr/bin/env bash", b"#!/usr/bin/sh")
SOURCES = {m[1]: " ".join(m[2].split()) for m in re.finditer(r"^- (\w+):(.*(\n {4,}.*)*)", __doc__ or "", re.M)}


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def build_tasks(*, n_train: int, n_val: int, n_test: int, names: Sequence[str] | None = None,
                path: Path | None = None, seed: int = 0) -> list[Task]:
    """Prefixes (n_train, n_val, n_test) of each split of the named tasks (all of TASKS if None), in TASKS order.

    A split with fewer records than asked for is returned whole. `seed` is ignored: the splits are frozen in the
    snapshot; it is accepted so that older callers keep working."""
    del seed
    path = path or SNAPSHOT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no task snapshot; build it with `python benchmarks/protect_tasks.py freeze`")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        header = json.loads(fh.readline() or "null")
        if not isinstance(header, dict) or header.get("kind") != KIND or header.get("schema_version") != SCHEMA_VERSION:
            got = (header.get("kind"), header.get("schema_version")) if isinstance(header, dict) else header
            raise ValueError(f"{path}: expected a {KIND!r} snapshot, schema_version {SCHEMA_VERSION}; header says {got}")
        known = header.get("tasks", {})
        wanted = list(known) if names is None else list(names)
        if missing := [n for n in wanted if n not in known]:
            raise ValueError(f"{path}: no task(s) {missing}; the snapshot has {list(known)}")
        limit = {"train": n_train, "val": n_val, "test": n_test}
        rows: dict[tuple[str, str], list[tuple[str, int]]] = {(n, s): [] for n in wanted for s in limit}
        for line in fh:
            rec = json.loads(line)
            key = (rec["task"], rec["split"])
            if key in rows and len(rows[key]) < limit[key[1]]:
                rows[key].append((rec["text"], int(rec["label"])))
    order = sorted(wanted, key=lambda n: (TASKS.index(n) if n in TASKS else len(TASKS), n))
    return [Task(n, tuple(known[n]["classes"]), *(tuple(rows[n, s]) for s in limit)) for n in order]


# ---- reading text ------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, EOFError, UnicodeError):
        return ""


_ESCAPE = re.compile(r"""\\(?:["#].*                # comment
    | \*?\((?P<n2>..) | \*?\[(?P<nb>[^]]*)\]         # named character or string: \(xx \*(xx \[name]
    | [fFmM](?:\(..|\[[^]]*\]|.)                      # font, colour
    | s[+-]?(?:\(\d\d|\[\d+\]|\d)                     # size
    | [hvwlLDNoXbxZ]'[^']*'                          # motions, drawing
    | [*n$][+-]?(?:\(..|\[[^]]*\]|.)                  # string, register, argument
    | (?P<char>.))""", re.X)
_NAMED = {"lq": '"', "rq": '"', "dq": '"', 'L"': '"', 'R"': '"', "Fo": "«", "Fc": "»", "aq": "'", "Aq": "'",
          "oq": "'", "cq": "'", "ga": "`", "em": "-", "en": "-", "hy": "-", "mi": "-", "--": "-", "rs": "\\",
          "``": '"', "''": '"', "de": "°", "co": "©", "ss": "ß", "oa": "å", "Oa": "Å", "tm": "™"}
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303", ",": "\u0327"}
_CHARS = {"e": "\\", "-": "-", " ": " ", "~": " ", "0": " ", "t": " "}


def _escape(m: re.Match[str]) -> str:
    name = m["n2"] or m["nb"]
    if name is not None:  # \('e is é, \[u00E9] too; other glyphs (bullets, boxes) are dropped
        if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
            return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
        if re.fullmatch(r"u[0-9A-F]{4,5}", name):
            return chr(int(name[1:], 16))
        return _NAMED.get(name, "")
    c = m["char"] or ""
    return _CHARS.get(c, "" if c.isalnum() or c in "&%|^!:/,){}" else c)


_SKIP = {".TS": ".TE", ".EQ": ".EN", ".PS": ".PE", ".de": "..", ".ig": "..", ".am": ".."}
_ALTERNATING = {"BR", "BI", "IR", "IB", "RB", "RI"}
_TEXT_MACROS = {"B", "I", "SM", "SB", "SH", "SS", "IP"}
_MDOC = {"Ad", "An", "Aq", "Ar", "Bq", "Cd", "Cm", "Dq", "Dv", "Em", "Er", "Ev", "Fa", "Fl", "Fn", "Ft", "Ic", "It", "Li",
         "Nd", "Nm", "No", "Ns", "Oc", "Oo", "Op", "Pa", "Pq", "Ql", "Qq", "Sh", "Sq", "Ss", "Sy", "Va", "Xr"}  # (BSD) mdoc


def _man_text(path: Path) -> str:
    """Readable text of a troff man page: requests dropped, text of font/section/mdoc macros kept, escapes resolved."""
    out: list[str] = []
    end, name = None, ""
    for line in _read(path).splitlines():
        head = line.split(maxsplit=1)[0] if line.strip() else ""
        if end is not None:
            end = None if head == end else end
            continue
        if head in _SKIP:
            end = _SKIP[head]
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].strip().partition(" ")
            args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest)]
            if macro in _ALTERNATING or macro in _TEXT_MACROS:
                line = ("" if macro in _ALTERNATING else " ").join(args[:1] if macro == "IP" else args)
            elif macro in _MDOC:  # .Nm alone is the page's name, .Fl x is -x
                name = name or (args[0] if macro == "Nm" and args else "")
                toks, words = [macro, *args], []
                for i, a in enumerate(toks):
                    nxt = toks[i + 1] if i + 1 < len(toks) else "Ns"
                    if a in ("Nm", "Fl") and nxt in _MDOC:
                        words.append(name if a == "Nm" else "-")
                    elif a not in _MDOC:
                        words.append("-" + a if toks[i - 1] == "Fl" else a)
                line = " ".join(words)
            else:
                continue
        out.append(_ESCAPE.sub(_escape, line))
    return " ".join(out)


def _windows(text: str, words: int) -> list[str]:
    tokens = text.split()
    chunks = (" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words) if len(tokens) - i >= words // 2)
    return [c for c in chunks if "\ufffd" not in c and not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in c)]


def _upstream_text(path: Path) -> str:
    """An upstream changelog/NEWS; "" for a Debian-format changelog (native packages name theirs changelog.gz)."""
    text = _read(path)
    return "" if re.match(r"\S+ \([^)]*\) [^;\n]*; urgency=", text) else text


def _is_shell(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(64).startswith(SHEBANGS)
    except OSError:
        return False


# ---- freezing ----------------------------------------------------------------------------------------------

Groups = list[list[str]]  # one class's windows, grouped by source file


def _shingles(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + 6]) for i in range(max(1, len(words) - 5))}


def _novel(text: str, seen: set[str]) -> bool:
    """Not a (near-)duplicate: at most half of its 6-word shingles were seen before."""
    shingles = _shingles(text)
    return len(shingles & seen) * 2 <= len(shingles)


def _file_groups(files: list[Path], reader: Callable[[Path], str], need: int, rng: random.Random,
                 seen: set[str]) -> Groups:
    """Windows of the (sorted, then shuffled) files until there are enough, at most `cap` per file: PER_FILE,
    raised while a class has too few files to reach `need` (plus room for the split boundaries)."""
    files = sorted({f.resolve() for f in files if f.is_file()})
    rng.shuffle(files)
    cache: dict[Path, list[str]] = {}
    cap = PER_FILE
    while True:
        groups: Groups = []
        mine: set[str] = set()
        n = 0
        for f in files:
            if f not in cache:
                cache[f] = [w for w in _windows(reader(f), WINDOW) if _novel(w, seen)]
            wins = [w for w in cache[f] if _novel(w, mine)]
            if len(wins) > cap:
                wins = [wins[i] for i in sorted(rng.sample(range(len(wins)), cap))]
            mine.update(*map(_shingles, wins))
            groups += [wins] if wins else []
            if (n := sum(map(len, groups))) >= need + 2 * cap:
                break
        if n >= need + 2 * cap or cap >= max(map(len, cache.values()), default=0):
            seen.update(mine)
            return groups
        cap += PER_FILE


def _sources(name: str, rng: random.Random) -> dict[str, Groups]:
    """Each class's windows, grouped by source, for one task."""
    seen: set[str] = set()  # shingles of the windows taken so far, by all classes
    if name == "man_section":
        files = {f"man{s}": [p for p in (MAN / f"man{s}").iterdir() if not p.name.startswith("gcloud")] for s in "123578"}
    elif name == "man_language":
        files = {lang: list((MAN / lang).glob("man*/*")) for lang in LANGUAGES}
    elif name == "python_package":
        files = {pkg: [p for p in (PY / pkg).rglob("*.py") if not {"test", "tests"} & set(p.parts)] for pkg in PACKAGES}
    elif name == "code_language":
        files = {"python": list(PY.glob("*.py")), "c": list(Path("/usr/include").glob("*.h")),
                 "perl": [*Path("/usr/share/perl/5.36.0").rglob("*.pm"), *Path("/usr/share/perl5").rglob("*.pm")],
                 "shell": [p for p in Path("/usr/bin").iterdir() if p.is_file() and _is_shell(p)]}
    elif name == "doc_kind":
        files = {"debian_changelog": list(DOC.glob("*/changelog.Debian.gz")), "copyright": list(DOC.glob("*/copyright")),
                 "readme": list(DOC.glob("*/README*")),
                 "upstream_changes": [p for g in ("changelog", "NEWS", "NEWS.md") for p in DOC.glob(f"*/{g}*")
                                      if p.name in (g, f"{g}.gz")]}
    else:
        raise ValueError(f"unknown task {name!r}")
    need = math.ceil(sum(SIZES.values()) / len(files))
    reader = _man_text if name.startswith("man_") else _read
    return {c: _file_groups(fs, _upstream_text if c == "upstream_changes" else reader, need, rng, seen)
            for c, fs in files.items()}


def _splits(groups: dict[str, Groups], rng: random.Random) -> dict[str, list[tuple[str, int]]]:
    """Class-balanced splits, each group in one split (test filled first), classes interleaved in every round."""
    k, total = len(groups), sum(SIZES.values())
    have = min(sum(map(len, g)) for g in groups.values())
    target = {s: n // k if have * k >= total else have * n // total for s, n in SIZES.items()}
    per_class: list[dict[str, list[str]]] = []
    for cls_groups in groups.values():
        got: dict[str, list[str]] = {s: [] for s in ("test", "val", "train")}
        room = {s: target[s] for s in got}
        for g in cls_groups:  # into the first split with room for all of g, else the roomiest (dropping the rest)
            s = next((s for s in room if room[s] >= len(g)), max(room, key=room.__getitem__))
            got[s] += g[: room[s]]
            room[s] -= len(g[: room[s]])
        per_class.append(got)
    out: dict[str, list[tuple[str, int]]] = {}
    for s in SIZES:
        m = min(len(c[s]) for c in per_class)
        out[s] = [(per_class[label][s][i], label) for i in range(m) for label in rng.sample(range(k), k)]
    return out


def freeze(path: Path = SNAPSHOT) -> None:
    tasks: dict[str, dict[str, object]] = {}
    records: list[dict[str, object]] = []
    for name in TASKS:
        rng = random.Random(0)  # one per task: re-freezing a task does not depend on the others
        groups = _sources(name, rng)
        tasks[name] = {"classes": list(groups), "source": SOURCES[name]}
        for split, items in _splits(groups, rng).items():
            records += [{"task": name, "split": split, "label": y, "text": t} for t, y in items]
    header = {"schema_version": SCHEMA_VERSION, "kind": KIND, "snapshot": SNAPSHOT_VERSION, "tasks": tasks,
              "window_words": {n: WINDOW for n in TASKS}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for obj in (header, *records):
            gz.write((json.dumps(obj, ensure_ascii=False) + "\n").encode())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(records)} records)")


def summary(path: Path = SNAPSHOT) -> None:
    for t in build_tasks(n_train=10**9, n_val=10**9, n_test=10**9, path=path):
        print(f"{t.name}: {len(t.classes)} classes, train/val/test = {len(t.train)}/{len(t.val)}/{len(t.test)}")
        for s in ("train", "val", "test"):
            counts = Counter(y for _, y in getattr(t, s))
            print(f"  {s:5}", "  ".join(f"{c}={counts[i]}" for i, c in enumerate(t.classes)))
        if t.train:
            print(f"  e.g. [{t.classes[t.train[0][1]]}] {t.train[0][0][:150]!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=SNAPSHOT, help="snapshot file (default: %(default)s)")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("freeze", help="rebuild the snapshot from this machine's text")
    args = parser.parse_args()
    (freeze if args.command == "freeze" else summary)(args.path)
