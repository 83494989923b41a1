"""Weight Evolution (Lin et al., ACM MM 2021) and the suite that reproduces its experiments.

The core API, `from we import WeightEvolution, evolve, selection_rate`, is loaded on first use (PEP 562):
`import we` alone, which every `we.*` module and command runs first, imports no torch, so a command
can refuse bad input before it pays for torch (see we/grid/__main__.py). `API` is the one table of
what the package exports and where each name lives; tests/test_architecture.py reads it as this
package's imports.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

API: dict[str, str] = {"WeightEvolution": "we.core.hook", "evolve": "we.core.paper_step",
                       "selection_rate": "we.core.rate"}
__all__ = list(API)


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'we' has no attribute {name!r}")
    value = getattr(import_module(API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
