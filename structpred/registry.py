"""Build an object by its registry name (models, solvers, gradients, outer optimisers)."""
from __future__ import annotations

from collections.abc import Mapping


def build(registry: Mapping[str, type], kind: str, name: str, **kwargs):
    """``registry[name](**kwargs)``, or a ValueError naming ``kind`` and the allowed names."""
    try:
        cls = registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {sorted(registry)}") from None
    return cls(**kwargs)
