"""JSON from untrusted bytes: size and nesting limits, no duplicate keys, no NaN/Infinity, no huge numbers.

Every parser of bytes an uploader controls (safetensors headers, shard indexes, config.json, tokenizer files,
webhook bodies) goes through `loads_untrusted`, so only the caller's hubguard error comes out — never a
RecursionError, a ValueError from a 5,000-digit integer, or a silently merged duplicate key.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hubguard.errors import HubguardError

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 40  # an int64 has at most 20 digits; floats in configs are short


class _Reject(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # some key came twice: name it
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(f"the key {key[:80]!r} appears twice in one object")
            seen.add(key)
    return out


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Reject(f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Reject(f"the number {text[:40]} overflows")
    return value


def _constant(text: str) -> Any:
    raise _Reject(f"the non-JSON constant {text}")


_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
_LONG_NUMBER = re.compile(rf"[-+0-9.eE]{{{MAX_NUMBER_CHARS + 1},}}")  # outside strings only numbers have these runs


def _long_number(bare: str) -> None:
    """Refuse a number longer than MAX_NUMBER_CHARS in JSON text with its strings removed (so the C parser reads
    every integer, and no 5,000-digit one reaches int())."""
    found = _LONG_NUMBER.search(bare)
    if found:
        raise _Reject(f"a number of {len(found.group())} characters")


def _depth(bare: str, limit: int) -> int:
    """Nesting depth of JSON text with its strings removed (exact for valid JSON), scanned before parsing, so a
    bomb is refused before the parser recurses into it. Stops once `limit` is passed."""
    depth = deepest = 0
    for b in _BRACKETS.findall(bare):
        if b in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def loads_untrusted(
    data: "bytes | str", *, what: str, error: type[HubguardError], max_bytes: int, max_depth: int = MAX_DEPTH,
    fix: str = "",
) -> Any:
    """Parse `data` (at most `max_bytes`, nesting at most `max_depth`) or raise `error` naming `what`."""
    size = len(data)
    tail = f" {fix}" if fix else ""
    if size > max_bytes:
        raise error(f"{what} is {size:,} bytes, above the {max_bytes:,}-byte limit.{tail}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        bare = _STRINGS.sub("", text)
        if _depth(bare, max_depth) > max_depth:
            raise error(f"{what} nests deeper than {max_depth} levels.{tail}")
        _long_number(bare)
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_float, parse_constant=_constant)
    except _Reject as err:
        raise error(f"{what} is not acceptable JSON: {err}.{tail}") from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels.{tail}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise error(f"{what} is not valid JSON ({err}).{tail}") from None
    return value
