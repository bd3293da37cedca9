"""A tiny multimodal context and batch for strategy tests (random tables, two named channels, and a
random training history for strategies that build item graphs from it)."""
import torch

from fusionbench.context import CODE_SENTINEL, ModalityTable, SeqBatch, StrategyContext
from fusionbench.data.core import SequenceData

N_ITEMS, MAX_LEN = 30, 8


def tiny_context(seed: int = 0, n_items: int = N_ITEMS, max_len: int = MAX_LEN) -> StrategyContext:
    g = torch.Generator().manual_seed(seed)
    tables = {}
    for name, dim, n_codes, k in (("image", 12, 6, 2), ("text", 10, 5, 3)):
        present = torch.rand(n_items + 1, generator=g) > 0.2
        present[0] = False
        features = torch.randn(n_items + 1, dim, generator=g) * present[:, None]
        codes = torch.randint(0, n_codes, (n_items + 1, k), generator=g)
        codes[~present] = CODE_SENTINEL
        tables[name] = ModalityTable(features, present, codes, n_codes)
    return StrategyContext(n_items=n_items, max_len=max_len, history=tiny_history(g, n_items)).with_modalities(tables)


def tiny_history(g: torch.Generator, n_items: int, n_users: int = 12) -> SequenceData:
    """Random training-visible sequences of lengths 2..9 over items 1..n_items (``StrategyContext.history``)."""
    lengths = torch.randint(2, 10, (n_users,), generator=g)
    offsets = torch.zeros(n_users + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    flat = torch.randint(1, n_items + 1, (int(offsets[-1]),), generator=g)
    return SequenceData("tiny", n_items, flat, offsets)


def tiny_batch(seed: int = 1, size: int = 6, n_items: int = N_ITEMS, max_len: int = MAX_LEN) -> SeqBatch:
    """Left-padded histories of lengths 1..max_len with repeats, next-item targets and user ids."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (size, max_len), generator=g)
    lengths = torch.linspace(1, max_len, size).long()
    items[torch.arange(max_len)[None, :] < (max_len - lengths)[:, None]] = 0
    items[0, -2:] = items[0, -1]  # a repeated consecutive item
    target = torch.randint(1, n_items + 1, (size,), generator=g)
    user = torch.arange(size) % 12  # users of tiny_history (graph-CF strategies identify rows by them)
    return SeqBatch(items=items, target=target, user=user)


def with_left_padding(batch: SeqBatch, extra: int) -> SeqBatch:
    pad = torch.zeros(batch.size, extra, dtype=batch.items.dtype)
    return SeqBatch(items=torch.cat([pad, batch.items], 1), target=batch.target, user=batch.user)
