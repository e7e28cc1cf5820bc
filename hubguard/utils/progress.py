"""tqdm progress bars that obey HUBGUARD_DISABLE_PROGRESS_BARS (or HF_HUB_DISABLE_PROGRESS_BARS)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from hubguard import constants

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, **kwargs: Any) -> Iterable[T]:
    """Wrap an iterable in a tqdm bar unless progress bars are disabled."""
    if constants.HUBGUARD_DISABLE_PROGRESS_BARS:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, **kwargs)
