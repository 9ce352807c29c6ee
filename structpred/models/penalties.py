"""Penalties rho(z) applied to filter responses, as seen from Python.

Each entry names a branch of :func:`structpred.kernels.penalties.penalty_terms` and gives
its default shape parameter ``c``. Every penalty works with every filter-based model
(``FilterMRF(penalty=...)``, the pairwise MRF); with ``learn_scale=True`` the shape ``c`` is
learned as ``log_scale`` (needs :func:`structpred.kernels.penalties.penalty_shape_terms`).
``learnable_shape`` is False for the quadratic penalty, whose ``c`` only rescales alpha.
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

    @property
    def learnable_shape(self) -> bool:
        return self.code != _k.QUADRATIC


PENALTIES = {
    "student_t": Penalty("student_t", _k.STUDENT_T, 0.5, False, "log(1 + c z^2)"),
    "quadratic": Penalty("quadratic", _k.QUADRATIC, 1.0, True, "c z^2 / 2"),
    "charbonnier": Penalty("charbonnier", _k.CHARBONNIER, 1.0, True, "sqrt(1 + c z^2) - 1"),
    "gen_charbonnier": Penalty("gen_charbonnier", _k.GEN_CHARBONNIER, 0.5, False,
                               f"((1 + c z^2)^a - 1) / a, a = {_k.GEN_CHARBONNIER_EXPONENT}"),
}


def get_penalty(name: str) -> Penalty:
    try:
        return PENALTIES[name]
    except KeyError:
        raise ValueError(f"unknown penalty {name!r}; allowed: {sorted(PENALTIES)}") from None
