"""Training-step speed of ``mgat`` and ``mmgcn`` before and after their sparse-kernel changes (issue 24), as
ratios measured in one process: the same model, optimizer and sampled first-epoch batches
(``fusionbench.devtools.profile.sample_batches``), the two variants' passes alternated (ABBA...), each pass's process
CPU time and wall time recorded, the minimum of each variant kept (docs/graph-cf.md, "Speed").

``after`` is the code as it is. ``before`` swaps in, on the same weights, what the code did before:

- ``mgat``: the per-edge gated attention (``tests/mgat_reference.py``: gathered ``[2E, d]`` products and
  ``index_add``);
- ``mmgcn``: ``adj @ W1 x`` through torch's own sparse backward (a transpose of adj per call);
- both: the item input of a code channel (``attr``) by ``ModalityChannel.table`` (gathered
  ``[n_items + 1, k, hidden]`` code vectors) instead of ``mmgcn.channel_table`` (one embedding_bag), and
  the loss read from a full propagation (the last layer at every node, not at the batch's nodes only).

    OMP_NUM_THREADS=1 python reports/cf_speed_probe.py --strategy mgat --every 15 --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import strategies.mmgcn as mmgcn  # noqa: E402
from fusionbench.data.splits import make_split  # noqa: E402
from fusionbench.devtools.profile import sample_batches  # noqa: E402
from fusionbench.registry import STRATEGIES  # noqa: E402
from fusionbench.runner import RunRequest, build_context, load_data, resolve  # noqa: E402
from fusionbench.train import TrainOptions, make_adam, seed_everything, train_step  # noqa: E402
from mgat_reference import gated_attention_per_edge  # noqa: E402
from strategies.cf_graph import bpr_loss  # noqa: E402
from strategies.mgat import GatedAttentionLayer  # noqa: E402


def full_loss(self, batch):
    """``MultiBranchCF.loss`` as it was: BPR read from a full propagation."""
    users, items = self.propagate()
    u, pos, neg = self.users_of(batch), batch.target, self.negatives(batch)
    e = self.id_emb
    reg = (e[u].pow(2).sum(-1) + e[self.n_users + pos].pow(2).sum(-1) + e[self.n_users + neg].pow(2).sum(-1)
           + self.preference[:, u].pow(2).sum((0, 2))).mean()
    return bpr_loss(users[u], items[pos], items[neg]) + self.opts.reg * reg


@contextlib.contextmanager
def before(strategy: str):
    """The former code paths, patched in for the duration."""
    saved = (GatedAttentionLayer.forward, mmgcn.MMGCN.layer, mmgcn.MultiBranchCF.loss, mmgcn.channel_table)
    mmgcn.channel_table = lambda channel: channel.table()
    mmgcn.MultiBranchCF.loss = full_loss
    if strategy == "mgat":
        GatedAttentionLayer.forward = (lambda self, x, dst, src, degree, e_id, pattern=None:
                                       gated_attention_per_edge(self, x, dst, src, degree, e_id))
    else:
        mmgcn.MMGCN.layer = lambda self, layer, x, e_id, rows=None: layer(x, self.adj, e_id)
    try:
        yield
    finally:
        GatedAttentionLayer.forward, mmgcn.MMGCN.layer, mmgcn.MultiBranchCF.loss, mmgcn.channel_table = saved


VARIANTS = {"after": contextlib.nullcontext, "before": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="mgat", choices=("mgat", "mmgcn"))
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--every", type=int, default=15, help="one in every N first-epoch batches (by size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each variant (after a warm-up)")
    parser.add_argument("--variants", default="after,before")
    args = parser.parse_args()
    config = resolve(RunRequest(strategy=args.strategy, dataset=args.dataset, seed=0))
    data = load_data(config, None)
    split = make_split(data, config["protocol"])
    seed_everything(0)
    model = STRATEGIES.create(args.strategy, build_context(config, data, split), **config["strategy_options"])
    opts = TrainOptions.build(config["train"])
    optimizer = make_adam(model.parameters(), opts.lr, opts.weight_decay)
    batches, n_batches = sample_batches(model, config, data, split, args.every)
    model.train()
    names = args.variants.split(",")
    print(f"{args.strategy} on {args.dataset}: {len(batches)} of {n_batches} first-epoch batches per pass, "
          f"{torch.get_num_threads()} thread(s), {model.graph.n_nodes} nodes, {2 * model.graph.user.numel()} "
          f"directed edges, channels {', '.join(model.names)}")
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats + 1):                 # pass 0 of each variant: warm-up, not kept
        for name in names if rep % 2 == 0 else names[::-1]:
            with VARIANTS[name](args.strategy) if name == "before" else contextlib.nullcontext():
                r0, c, w = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
                for batch in batches:
                    train_step(model, optimizer, batch, False)
                c, w = time.process_time() - c, time.perf_counter() - w
                sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0.ru_stime
            if rep:
                cpu[name].append(c)
                wall[name].append(w)
            print(f"  pass {rep} {name:6s} cpu {c:7.2f} s (system {sys_s:5.2f} s)  wall {w:7.2f} s", flush=True)
    for name in names:
        step = min(cpu[name]) / len(batches)
        print(f"{name:6s} min cpu/step {step * 1e3:7.1f} ms, min wall/step {min(wall[name]) / len(batches) * 1e3:7.1f} "
              f"ms; epoch extrapolated {step * n_batches:6.1f} s cpu")
    if len(names) == 2:
        print(f"ratio {names[1]} / {names[0]}: cpu {min(cpu[names[1]]) / min(cpu[names[0]]):.2f}, "
              f"wall {min(wall[names[1]]) / min(wall[names[0]]):.2f}")


if __name__ == "__main__":
    main()
