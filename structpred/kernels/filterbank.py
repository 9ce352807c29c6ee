"""Fast filter-bank kernels of the filter MRF, specialised (code-generated) per filter size m.

Why generated: with the filter size a compile-time constant, the m taps of a filter row are
unrolled into straight-line code, so LLVM vectorises the loop over image columns with the
filter coefficients in registers and every loaded image vector reused by a block of
``KB`` filters (register tiling). The generic loops of :mod:`structpred.kernels.correlation`
(taps as runtime loops, one filter per pass) are load/store bound and 2-4x slower.

For each m one module is generated from the template module
:mod:`structpred.kernels._filterbank_template` (valid Python; the placeholders are the filter
size ``M`` and the bodies of ``corr_rows`` and ``adj_row``, written here) by
:func:`structpred.kernels.codegen.render`, and written once to the kernel cache folder by
:func:`structpred.kernels.codegen.load`, so that Numba's on-disk cache works for it. It has:

* ``prior_pass(y, F, w, kind, c, Rp, erow)``: responses ``z = F (*) y`` for all filters,
  fused with the penalty: ``Rp[k] <- w_k rho'(z_k)`` (interior of a zero-padded buffer)
  and ``erow[i] <- sum_k w_k sum_j rho(z_k[i, j])``.
* ``curvature_pass(y, F, w, kind, c, D)``: ``D[k] <- w_k rho''(z_k)``.
* ``scaled_pass(v, F, D, Sp)``: ``Sp[k] <- D[k] * (F_k (*) v)`` (padded, for E_yy v).
* ``adjoint_pass(Rp, Ff, y, x, lam, out, drow)``: ``out <- lam (y - x) + C^T R`` and
  ``drow[p] <- lam/2 ||y_p - x_p||^2``, the adjoint correlation computed as a 'valid'
  correlation of the zero-padded responses with the flipped filters ``Ff`` (no edge cases).
* ``energy_grad(y_flat, g_flat, args)``: the solvers' energy-gradient kernel, ``args`` an
  :class:`~structpred.kernels.kernel_args.EnergyArgs`; ``energy_grad_task`` the same with a
  task data term (:mod:`structpred.kernels.dataterm`), ``args`` a ``TaskEnergyArgs``.
* ``hvp(v, out, args)``: ``out <- lam v + C^T (D * C v)`` (``args`` an ``HvpArgs``, D from
  ``curvature_pass``); ``hvp_task(v, out, args)``: ``out <- lam A^T A v + C^T (D * C v)``
  (``args`` a ``TaskHvpArgs``).
* ``mixed_pass(y, u, F, kind, c, want_scale, dF, ga, gs)``: the sums of the mixed product
  E_wy^T u (filters, weights, penalty scale) in one pass, no K x N temporaries.

The penalty stays a runtime switch (``kind``), see :mod:`structpred.kernels.penalties`.
Every kernel is ``nogil``; the ``*_serial`` variants of the energy-gradient and
Hessian-vector kernels run on the calling thread only (for threads over images).
"""
from __future__ import annotations

import functools

from structpred.kernels import codegen

KB = 4          # filters per register tile of the forward correlation


def adjoint_tile(m: int) -> int:
    """Filters per register tile of the adjoint correlation: as many as keep the tile's
    ``tile * m`` coefficients within 16 vector registers. Each output of the adjoint loads
    ``tile * m`` distinct inputs, so a larger tile saves only the output's load/store and
    spills coefficients: on 180x180 (2 cores of an AMD Zen 4), tile 4 -> 2 made the 48x7x7
    energy-gradient and E_yy v 1.4x faster (7.2 -> 5.1 ms) and 24x5x5 tile 4 -> 3 1.15x;
    8x3x3 was flat."""
    return max(1, min(4, 16 // m))


def _tree(terms):
    """A balanced sum (independent partial sums: no long FMA dependency chain)."""
    while len(terms) > 1:
        terms = [f"({terms[i]} + {terms[i + 1]})" if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def _corr_block(m, kb, indent):
    """Code for one tile of ``kb`` filters starting at ``k0`` (forward correlation)."""
    sp = " " * indent
    L = []
    for q in range(kb):
        L.append(f"{sp}o{q} = out[k0 + {q}, oi, ooff:ooff + Wv]")
    L.append(f"{sp}for a in range(M):")
    L.append(f"{sp}    src = y[i + a]")
    for q in range(kb):
        L.append(f"{sp}    " + "; ".join(f"c{q}_{b} = F[k0 + {q}, a, {b}]" for b in range(m)))
    for first in (True, False):
        L.append(f"{sp}    {'if a == 0' if first else 'else'}:")
        L.append(f"{sp}        for j in range(Wv):")
        L.append(f"{sp}            " + "; ".join(f"v{b} = src[j + {b}]" for b in range(m)))
        for q in range(kb):
            expr = _tree([f"c{q}_{b} * v{b}" for b in range(m)])
            L.append(f"{sp}            o{q}[j] {'=' if first else '+='} {expr}")
    return L


def _adj_block(m, kb, indent):
    sp = " " * indent
    L = [f"{sp}for a in range(M):"]
    for q in range(kb):
        L.append(f"{sp}    r{q} = Rp[k0 + {q}, p + a]")
        L.append(f"{sp}    " + "; ".join(f"c{q}_{b} = Ff[k0 + {q}, a, {b}]" for b in range(m)))
    L.append(f"{sp}    for j in range(W):")
    expr = _tree([f"c{q}_{b} * r{q}[j + {b}]" for q in range(kb) for b in range(m)])
    L.append(f"{sp}        dst[j] += {expr}")
    return L


#: the energy-gradient kernels of a generated module (the solvers' ``fg``)
ENERGY_KERNELS = ("energy_grad", "energy_grad_serial", "energy_grad_task",
                  "energy_grad_task_serial")
TEMPLATE = "structpred.kernels._filterbank_template"


def generate_source(m: int) -> str:
    """The generated module's source for filter size ``m``: the template with ``M`` and the
    unrolled, register-tiled bodies of ``corr_rows`` and ``adj_row`` filled in."""
    corr = (["K = F.shape[0]", "k0 = 0", f"while k0 + {KB} <= K:"] + _corr_block(m, KB, 4)
            + [f"    k0 += {KB}", "while k0 < K:"] + _corr_block(m, 1, 4) + ["    k0 += 1"])
    ka = adjoint_tile(m)
    adj = (["K = Ff.shape[0]", "W = dst.shape[0]", "k0 = 0", f"while k0 + {ka} <= K:"]
           + _adj_block(m, ka, 4) + [f"    k0 += {ka}", "while k0 < K:"] + _adj_block(m, 1, 4)
           + ["    k0 += 1"])
    return codegen.render(TEMPLATE, {"M": f"M = {m}", "corr_body": "\n".join(corr),
                                     "adj_body": "\n".join(adj)})


def _depends_on():
    from structpred.kernels import dataterm, kernel_args, penalties
    return (penalties.__file__, dataterm.__file__, kernel_args.__file__)


def module_name(m: int) -> str:
    """The name (with its digest) of the generated module for filter size ``m``, without
    loading it (``python -m structpred.kernels list`` tells current from stale by it)."""
    return codegen.module_name(f"structpred_fb_m{int(m)}", generate_source(int(m)),
                               _depends_on())


@functools.cache
def kernels_for(m: int):
    """The generated kernel module for filter size ``m`` (generated and imported once)."""
    return codegen.load(f"structpred_fb_m{int(m)}", generate_source(int(m)),
                        depends_on=_depends_on())
