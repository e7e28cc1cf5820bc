"""Build a versioned token set: `python -m hubguard.redteam.tokenset --out v1.json`.

v1: lowercase English words of 4-10 letters, ranked by frequency in the Python documentation that ships with
every CPython (`pydoc_data.topics`), keeping mid-frequency words (ranks 300..) that are whole words in
BERT's uncased WordPiece vocabulary (so they are single tokens in WordPiece, SentencePiece and byte-level BPE
vocabularies of ordinary size). Mid-frequency words are trained in every model yet less shaped by any one
fine-tuning corpus than the most frequent ones. The list is frozen once published: never edit v1.json,
publish v2 instead.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path


def build(*, vocab_txt: Path, size: int, skip: int) -> list[str]:
    from pydoc_data import topics

    text = " ".join(topics.topics.values()).lower()
    counts = Counter(re.findall(r"\b[a-z]{4,10}\b", text))
    bert = set(vocab_txt.read_text(encoding="utf-8").split())
    ranked = [w for w, _ in counts.most_common() if w in bert]
    return ["▁" + w for w in ranked[skip : skip + size]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-txt", type=Path, required=True, help="BERT uncased vocab.txt (all-MiniLM-L6-v2's)")
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--skip", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tokens = build(vocab_txt=args.vocab_txt, size=args.size, skip=args.skip)
    payload = {
        "schema_version": 1,
        "name": args.out.stem,
        "rule": f"pydoc_data.topics word frequency ranks {args.skip}..{args.skip + args.size} within BERT uncased vocab",
        "tokens": tokens,
    }
    args.out.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(tokens)} tokens to {args.out}")


if __name__ == "__main__":
    main()
