"""Stability of MMSR's ``han`` update rules in the first epoch: per training step the loss, the gradient
norm and the largest absolute attention score of each phase, as ``fusionbench run`` trains the same
configuration (same seed, batches and optimizer; docs/departures.md, HAN-GNN).

The two-phase rules read their phase-2 scores from the phase-1 output ``u``: for ``ni_hohe`` and ``hohe``
these are heterogeneous query-key scores :math:`(W_Q u^{ho}) \\cdot (W_K u^{ho}) / \\sqrt d` with
:math:`u^{ho} = \\sum_j \\alpha_{ij} W_V h_j`, of fourth order in the weights. Their growth is what this
probe watches: the largest ``|e^{he}|`` and ``|e^{ho}|`` over each step's calls (phase 1 and 2 together).

    OMP_NUM_THREADS=1 python reports/han_stability_probe.py --update ni_hohe --precision bf16 --every 25
    OMP_NUM_THREADS=1 python reports/han_stability_probe.py --update ni_hohe --set train.grad_clip=1.0
    FUSIONBENCH_BF16_PRODUCTS=native python reports/han_stability_probe.py --update gate --dataset toys \
        --protocol loo --seed 2 --steps 480 --every 10

The last one compares the two ways a bf16 product can be formed (``fusionbench/bf16.py``; ``native`` or
``float32`` in ``FUSIONBENCH_BF16_PRODUCTS``, the header prints which one ran).

Each step is ``fusionbench.train.train_step``, the trainer's own; the gradient norm printed is what the
step left on the parameters (after clipping, when ``train.grad_clip`` is set).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

from aggregators.han import HAN, UPDATES  # noqa: E402
from fusionbench.bf16 import bf16_products  # noqa: E402
from fusionbench.cli import parse_sets  # noqa: E402
from fusionbench.data.splits import make_split  # noqa: E402
from fusionbench.registry import STRATEGIES  # noqa: E402
from fusionbench.runner import RunRequest, build_context, load_data, resolve  # noqa: E402
from fusionbench.train import TrainOptions, epoch_batches, make_adam, seed_everything, train_step  # noqa: E402


class ScorePeaks:
    """The largest absolute heterogeneous and homogeneous attention score computed since :meth:`reset`,
    read by wrapping ``HAN.heterogeneous_logits`` / ``HAN.homogeneous_logits`` (no copy is kept)."""

    def __init__(self) -> None:
        self.peaks = {"he": 0.0, "ho": 0.0}
        for kind, name in (("he", "heterogeneous_logits"), ("ho", "homogeneous_logits")):
            setattr(HAN, name, self._watch(kind, getattr(HAN, name)))

    def _watch(self, kind: str, method):
        def watched(layer, *args, **kwargs):
            scores = method(layer, *args, **kwargs)
            self.peaks[kind] = max(self.peaks[kind], scores.detach().abs().max().float().item())
            return scores
        return watched

    def reset(self) -> None:
        self.peaks = dict.fromkeys(self.peaks, 0.0)


def gradient_norm(model: torch.nn.Module) -> float:
    """The global 2-norm of the gradients the last step left on ``model`` (after clipping, if any)."""
    norms = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--protocol", default="ratio")
    parser.add_argument("--update", default="ni_hohe", choices=UPDATES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="further options, as for fusionbench run (e.g. train.grad_clip=1.0)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to train, as fusionbench run draws them")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: --epochs epochs)")
    parser.add_argument("--every", type=int, default=25, help="print one step in every N, and every step "
                        "whose loss exceeds --alarm")
    parser.add_argument("--alarm", type=float, default=12.0)
    args = parser.parse_args()
    groups = parse_sets(args.sets)
    groups["train_options"] = {"precision": args.precision, **groups["train_options"]}
    groups["aggregator_options"] = {"update": args.update, **groups["aggregator_options"]}
    config = resolve(RunRequest(strategy="mmsr", aggregator="han", dataset=args.dataset, protocol=args.protocol,
                                seed=args.seed, **groups))
    data = load_data(config, None)
    split = make_split(data, config["protocol"])
    model = STRATEGIES.create("mmsr", build_context(config, data, split), **config["strategy_options"])
    opts = TrainOptions.build(config["train"])
    seed_everything(config["seed"])                      # as fusionbench.train.train
    model.reset_parameters()
    optimizer = make_adam(model.parameters(), opts.lr, opts.weight_decay)
    generator = torch.Generator().manual_seed(config["seed"])
    keys = None if model.causal_training else model.bucket_key(data, split.train)
    peaks = ScorePeaks()
    bf16 = opts.precision == "bf16"
    route = f", bf16 products: {bf16_products()}" if bf16 else ""
    print(f"mmsr + han (update={args.update}) on {args.dataset}/{args.protocol}, seed {args.seed}{route}, "
          f"train {config['train']}")
    print("step  loss      grad norm   max|e_he|   max|e_ho|")
    model.train()
    step = 0
    for epoch in range(1, args.epochs + 1):
        batches = epoch_batches(model, data, split, config["max_len"], opts.batch_size, generator, None, keys,
                                opts.batching)
        for batch in batches:
            peaks.reset()
            value = train_step(model, optimizer, batch, bf16, opts.grad_clip)
            if step % args.every == 0 or value > args.alarm or not math.isfinite(value):
                print(f"{step:<5d} {value:<9.3f} {gradient_norm(model):<11.3g} {peaks.peaks['he']:<11.3g} "
                      f"{peaks.peaks['ho']:.3g}", flush=True)
            step += 1
            if not math.isfinite(value) or (args.steps and step >= args.steps):
                return
        print(f"end of epoch {epoch} after step {step - 1}", flush=True)


if __name__ == "__main__":
    main()
