"""Training-step speed of the graph-CF layers before and after the sparse-kernel MGAT layer (issue 24),
as ratios measured in one process: the same model, optimizer and sampled first-epoch batches, the
variants' passes alternated, each pass's process CPU time and wall time recorded, the minimum of each
variant kept (docs/graph-cf.md, "Speed").

Variants: ``sparse`` (:class:`strategies.mgat.GatedAttentionLayer` as it is) and ``per-edge`` (the same
weights through ``tests/mgat_reference.py``, the layer's former formulation).

    OMP_NUM_THREADS=1 python reports/cf_speed_probe.py --every 15 --repeats 3
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fusionbench.data.splits import make_split  # noqa: E402
from fusionbench.profile import sample_batches  # noqa: E402
from fusionbench.registry import STRATEGIES  # noqa: E402
from fusionbench.runner import RunRequest, build_context, load_data, resolve  # noqa: E402
from fusionbench.train import TrainOptions, make_adam, seed_everything, train_step  # noqa: E402
from mgat_reference import gated_attention_per_edge  # noqa: E402
from strategies.mgat import GatedAttentionLayer  # noqa: E402

SPARSE_FORWARD = GatedAttentionLayer.forward


def per_edge_forward(self, x, dst, src, degree, e_id, pattern=None):
    return gated_attention_per_edge(self, x, dst, src, degree, e_id)


VARIANTS = {"sparse": SPARSE_FORWARD, "per-edge": per_edge_forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--every", type=int, default=15, help="one in every N first-epoch batches")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="sparse,per-edge")
    args = parser.parse_args()
    config = resolve(RunRequest(strategy="mgat", dataset=args.dataset, seed=0))
    data = load_data(config, None)
    split = make_split(data, config["protocol"])
    seed_everything(0)
    model = STRATEGIES.create("mgat", build_context(config, data, split), **config["strategy_options"])
    opts = TrainOptions.build(config["train"])
    optimizer = make_adam(model.parameters(), opts.lr, opts.weight_decay)
    batches, n_batches = sample_batches(model, config, data, split, args.every)
    model.train()
    names = args.variants.split(",")
    print(f"mgat on {args.dataset}: {len(batches)} of {n_batches} first-epoch batches per pass, "
          f"{torch.get_num_threads()} thread(s), edges {model.dst.numel()}, nodes {model.degree.numel()}")
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats + 1):                 # pass 0 of each variant: warm-up, not kept
        for name in names if rep % 2 == 0 else names[::-1]:
            GatedAttentionLayer.forward = VARIANTS[name]
            r0, c, w = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
            for batch in batches:
                train_step(model, optimizer, batch, False)
            c, w = time.process_time() - c, time.perf_counter() - w
            sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0.ru_stime
            if rep:
                cpu[name].append(c)
                wall[name].append(w)
            print(f"  pass {rep} {name:9s} cpu {c:7.2f} s (system {sys_s:5.2f} s)  wall {w:7.2f} s", flush=True)
    GatedAttentionLayer.forward = SPARSE_FORWARD
    for name in names:
        step = min(cpu[name]) / len(batches)
        print(f"{name:9s} min cpu/step {step * 1e3:8.1f} ms  min wall/step {min(wall[name]) / len(batches) * 1e3:8.1f} ms"
              f"  epoch extrapolated: {step * n_batches:6.1f} s cpu")
    if len(names) == 2:
        print(f"ratio {names[1]} / {names[0]}: cpu {min(cpu[names[1]]) / min(cpu[names[0]]):.2f}, "
              f"wall {min(wall[names[1]]) / min(wall[names[0]]):.2f}")


if __name__ == "__main__":
    main()
