"""Penalties rho(z) applied to filter responses, as seen from Python.

Each entry names a branch of :func:`structpred.kernels.penalties.penalty_terms` and gives
its default shape parameter ``c``.
"""
from __future__ import annotations

from dataclasses import dataclass

from structpred.kernels import penalties as _k


@dataclass(frozen=True)
class Penalty:
    name: str
    code: int
    default_scale: float
    convex: bool
    formula: str


PENALTIES = {
    "student_t": Penalty("student_t", _k.STUDENT_T, 0.5, False, "log(1 + c z^2)"),
    "quadratic": Penalty("quadratic", _k.QUADRATIC, 1.0, True, "c z^2 / 2"),
}


def get_penalty(name: str) -> Penalty:
    try:
        return PENALTIES[name]
    except KeyError:
        raise ValueError(f"unknown penalty {name!r}; allowed: {sorted(PENALTIES)}") from None
