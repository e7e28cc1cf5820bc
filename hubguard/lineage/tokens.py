"""Token alignment by string.

Each tokenizer family marks word boundaries differently: WordPiece prefixes continuations with `##`,
SentencePiece prefixes word starts with `▁`, byte-level BPE encodes a leading space as `Ġ` (and every byte
as a printable character). We map every vocabulary entry to one canonical key — `▁word` for a word start,
`piece` for a continuation — so the same string finds its row in any vocabulary, whatever its id.

The token set is a fixed, versioned list of canonical keys (`tokensets/v1.json`). A model uses those keys
its vocabulary holds; two models are compared on the keys both hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from hubguard.errors import TokenizerError
from hubguard.weights.store import ByteStore

WORD_START = "▁"
DEFAULT_TOKEN_SET = "v1"
MIN_TOKENS = 32  # fewer shared tokens than this cannot support a verdict


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table (byte-level BPE's printable alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def canonical_key(token: str, *, style: str, continuation_prefix: str = "##") -> str | None:
    """The canonical key of one vocabulary entry, or None for entries that are not text (bytes, specials)."""
    if style == "byte_level":
        table = _byte_decoder()
        try:
            text = bytes(table[c] for c in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
        return WORD_START + text[1:] if text.startswith(" ") and len(text) > 1 else text
    if style == "wordpiece":
        if token.startswith(continuation_prefix):
            return token[len(continuation_prefix) :] or None
        return WORD_START + token
    # sentencepiece / metaspace: `▁` already marks word starts; byte-fallback pieces are not text
    if token.startswith("<0x") and token.endswith(">"):
        return None
    return token


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary as canonical key -> token id (lowest id wins on duplicates)."""

    ids: dict[str, int]
    style: str
    size: int
    sha256: str  # hash of the tokenizer file it came from: equal hashes mean identical tokenizers

    def lookup(self, keys: list[str]) -> tuple[list[str], list[int]]:
        present = [k for k in keys if k in self.ids]
        return present, [self.ids[k] for k in present]


def _walk_types(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [str(node.get("type", ""))]
        for key in ("pretokenizers", "decoders", "normalizers"):
            for child in node.get(key) or []:
                out += _walk_types(child)
        return out
    return []


MAX_TOKENIZER_BYTES = 256 << 20


def _untrusted_json(text: str, where: str) -> Any:
    from hubguard.utils.jsonsafe import loads_untrusted

    return loads_untrusted(text, what=where, error=TokenizerError, max_bytes=MAX_TOKENIZER_BYTES,
                           fix="Re-save the tokenizer (tokenizer.save_pretrained(DIR)).")


def _from_tokenizer_json(text: str, source: str) -> Vocabulary:
    tok = _untrusted_json(text, f"'{source}/tokenizer.json'")
    try:
        return _parse_tokenizer(tok, text=text, source=source)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise TokenizerError(f"'{source}/tokenizer.json' is not a valid tokenizers file ({type(err).__name__}: "
                             f"{str(err)[:200]}). Re-save the tokenizer.") from None


def _parse_tokenizer(tok: Any, *, text: str, source: str) -> Vocabulary:
    model = tok["model"]
    types = _walk_types(tok.get("pre_tokenizer")) + _walk_types(tok.get("decoder"))
    mtype = model.get("type")
    if mtype == "WordPiece":
        style = "wordpiece"
    elif "ByteLevel" in types:
        style = "byte_level"
    else:
        style = "metaspace"
    vocab = model.get("vocab")
    pairs: list[tuple[str, int]]
    if isinstance(vocab, dict):
        pairs = [(str(k), int(v)) for k, v in vocab.items()]
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
        pairs = [(str(item[0]), i) for i, item in enumerate(vocab)]
    else:
        raise TokenizerError(f"'{source}/tokenizer.json' has no vocabulary in its model section.")
    for added in tok.get("added_tokens") or []:
        if not added.get("special"):
            pairs.append((str(added["content"]), int(added["id"])))
    prefix = model.get("continuing_subword_prefix") or "##"
    return _vocabulary(pairs, style=style, text=text, continuation_prefix=prefix)


def _vocabulary(pairs: list[tuple[str, int]], *, style: str, text: str, continuation_prefix: str = "##") -> Vocabulary:
    """(token, id) pairs -> canonical key -> lowest id."""
    ids: dict[str, int] = {}
    for token, idx in sorted(pairs, key=lambda p: p[1]):
        key = canonical_key(token, style=style, continuation_prefix=continuation_prefix)
        if key is not None and key not in ids:
            ids[key] = idx
    size = max((i for _, i in pairs), default=-1) + 1
    return Vocabulary(ids=ids, style=style, size=size, sha256=hashlib.sha256(text.encode()).hexdigest())


def load_vocabulary(store: ByteStore) -> Vocabulary:
    """Read the tokenizer files of a model (tokenizer.json, vocab.txt, or vocab.json) as a Vocabulary."""
    text = store.read_text("tokenizer.json")
    if text is not None:
        return _from_tokenizer_json(text, store.name)
    text = store.read_text("vocab.txt")
    if text is not None:
        return _vocabulary([(t, i) for i, t in enumerate(text.splitlines())], style="wordpiece", text=text)
    text = store.read_text("vocab.json")
    if text is not None:
        try:
            vocab = {str(k): int(v) for k, v in _untrusted_json(text, f"'{store.name}/vocab.json'").items()}
        except (AttributeError, ValueError, TypeError) as err:
            raise TokenizerError(f"'{store.name}/vocab.json' is not a token->id JSON object ({err}).") from None
        return _vocabulary(list(vocab.items()), style="byte_level", text=text)
    raise TokenizerError(
        f"'{store.name}' has no tokenizer (tokenizer.json, vocab.txt or vocab.json). hubguard aligns embedding rows by "
        "token string, so it needs the tokenizer files: save them next to the weights "
        "(tokenizer.save_pretrained(DIR)). A SentencePiece-only tokenizer.model can be converted with "
        "transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)."
    )


@lru_cache(maxsize=8)
def load_token_set(name: str = DEFAULT_TOKEN_SET) -> tuple[str, ...]:
    """The versioned token set: canonical keys in a fixed order."""
    try:
        text = (resources.files("hubguard.lineage") / "tokensets" / f"{name}.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"Unknown token set '{name}'. This hubguard knows: {DEFAULT_TOKEN_SET}. Upgrade hubguard.") from None
    data = json.loads(text)
    return tuple(data["tokens"])


def token_rows(vocab: Vocabulary, *, token_set: str, vocab_rows: int, source: str) -> tuple[list[str], list[int]]:
    """(keys, embedding row ids) of the token set's keys this vocabulary holds and whose ids have a row."""
    wanted = load_token_set(token_set)
    keys, ids = vocab.lookup(list(wanted))
    usable = [(k, i) for k, i in zip(keys, ids) if 0 <= i < vocab_rows]
    if len(usable) < MIN_TOKENS:
        raise TokenizerError(
            f"'{source}': only {len(usable)} of the {len(wanted)} tokens of token set '{token_set}' are in its "
            f"vocabulary (need {MIN_TOKENS}). Is the tokenizer the model's own? A model with a non-English or "
            "character-level vocabulary needs another token set."
        )
    return [k for k, _ in usable], [i for _, i in usable]


def token_set_index(tokens: "tuple[str, ...] | list[str]", *, token_set: str) -> list[int]:
    """Positions of `tokens` in the full token set (where a fingerprint's tokens sit on the shared grid)."""
    pos = {t: i for i, t in enumerate(load_token_set(token_set))}
    missing = [t for t in tokens if t not in pos]
    if missing:
        raise TokenizerError(f"Tokens {missing[:3]} are not in token set '{token_set}'; the fingerprint is corrupted.")
    return [pos[t] for t in tokens]
