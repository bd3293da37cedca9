"""Stress-test perturbations (specs/protocol.md §4), registered in ``PERTURBATIONS``.

=============  ==========================  ===========================================================
name           level (by mode)             what changes
=============  ==========================  ===========================================================
``disorder``   sequence                    round(p·m) positions of each history permuted (targets fixed)
``mismatch``   catalog (``swap``),         a derangement of round(p·n) items' side data; or channels
               sequence (``shift``)        one position behind the ids in a fraction p of histories
``missing``    catalog (``item``),         round(p·n) items lose channels; or each occurrence loses
               sequence (``occurrence``)   each channel with probability p
=============  ==========================  ===========================================================

Every perturbation is built as ``PERTURBATIONS.create(name, PerturbContext(p, seed, channels), **options)``
and is a pure function of its input, p and the seed (:mod:`fusionbench.perturb.base`); p = 0 returns
the input itself. How a run applies one (``apply_to``, the model rebuilt on other tables for test,
causal strategies on prefix samples) is :mod:`fusionbench.perturb.plan`.
"""
from fusionbench.perturb import disorder, mismatch, missing  # noqa: F401  (register the built-ins)
from fusionbench.perturb.base import Perturbation, PerturbContext

__all__ = ["Perturbation", "PerturbContext"]
