"""The per-edge MGAT layer the sparse-kernel one replaced (issue 24, speed): the reference of
``tests/test_cf.py``'s parity tests and of the ``train_step[mgat]`` benchmark's ``reference`` case.

It reads the weights of a :class:`strategies.mgat.GatedAttentionLayer` and computes the module docstring's
equations with gathered ``[2E, d]`` operands and ``index_add``, exactly as the layer did before.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from strategies.mgat import segment_softmax


def gated_attention_per_edge(layer, x: Tensor, dst: Tensor, src: Tensor, degree: Tensor, e_id: Tensor) -> Tensor:
    """``layer``'s output ``[N, d]`` for x ``[N, d_in]``, edges ``dst, src [M]`` (src -> dst), degree ``[N]``,
    e_id ``[N, d]``."""
    wx = layer.w(x)
    s = (wx[dst] * F.leaky_relu(wx[src], layer.slope)).sum(-1)
    gate = torch.sigmoid(s / degree[dst].clamp(min=1).sqrt())
    alpha = segment_softmax(s * gate, dst, x.shape[0])
    agg = torch.zeros_like(wx).index_add(0, dst, alpha[:, None] * wx[src])
    h = F.normalize(agg + layer.bias, dim=-1)
    if layer.reference:
        h = F.leaky_relu(h, layer.slope)
    return F.leaky_relu(layer.w_g(h) + F.leaky_relu(layer.w_l(x), layer.slope) + e_id, layer.slope)
