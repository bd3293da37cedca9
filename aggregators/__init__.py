"""Graph aggregators on dense batched typed graphs; importing this package registers the built-ins.

One module per operator (MMSR Table 3 names): gcn, sage, gat, graphormer, rgat, hgnn, hgat, han.
Conventions (relation channels, node types) are in :mod:`aggregators.base`; shared tensor helpers in
:mod:`aggregators.attention`.
"""
from aggregators import gat, gcn, graphormer, han, hgat, hgnn, rgat, sage  # noqa: F401  (registration)
