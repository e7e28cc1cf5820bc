"""The hubguard Space (Gradio): lineage check, compare, registry, moderation, protection audit.

`build_demo(registry=None)` and `launch(demo=None, **launch_kwargs)` load gradio on first use, so importing
this package (e.g. for `hubguard space build`, see `hubguard.spaceapp.build`) needs no gradio.
"""

from __future__ import annotations

from typing import Any


def build_demo(*args: Any, **kwargs: Any) -> Any:
    from hubguard.spaceapp.app import build_demo as _build

    return _build(*args, **kwargs)


def launch(*args: Any, **kwargs: Any) -> Any:
    from hubguard.spaceapp.app import launch as _launch

    return _launch(*args, **kwargs)


__all__ = ["build_demo", "launch"]
