"""Training-step speed of ``difsr`` with its fused-score product against the per-stream form, as a ratio
measured in one process: the same model, optimizer and sampled first-epoch batches
(``fusionbench.devtools.profile.sample_batches``), the two variants' passes alternated, each pass's process
CPU time kept, the minimum of each variant compared (CHANGELOG, 2026-12-06).

``after`` is the code as it is: ``DecoupledScorer.forward`` forms the fused scores with one product over
the streams' concatenated, weight-scaled queries and keys. ``before`` patches in the per-stream form it
equals, ``fuse(*stream_scores(x, side))``: every stream's ``[B, heads, L, L]`` scores stacked, then weighted
and summed.

    OMP_NUM_THREADS=1 python reports/difsr_speed_probe.py --every 40 --repeats 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from fusionbench.data.splits import make_split  # noqa: E402
from fusionbench.devtools.profile import sample_batches  # noqa: E402
from fusionbench.registry import STRATEGIES  # noqa: E402
from fusionbench.runner import RunRequest, build_context, load_data, resolve  # noqa: E402
from fusionbench.train import TrainOptions, make_adam, seed_everything, train_step  # noqa: E402
from strategies.difsr import DecoupledScorer  # noqa: E402

FUSED = DecoupledScorer.forward


def per_stream(self, x, side):
    return self.fuse(*self.stream_scores(x, side))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--fusion", default="gate", choices=("gate", "sum", "concat"))
    parser.add_argument("--every", type=int, default=40, help="one in every N first-epoch batches (by size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each variant (after a warm-up)")
    args = parser.parse_args()
    config = resolve(RunRequest(strategy="difsr", dataset=args.dataset, seed=0,
                                strategy_options={"fusion": args.fusion}, train_options={"precision": "bf16"}))
    data = load_data(config, None)
    split = make_split(data, config["protocol"])
    seed_everything(0)
    model = STRATEGIES.create("difsr", build_context(config, data, split), **config["strategy_options"])
    optimizer = make_adam(model.parameters(), TrainOptions.build(config["train"]).lr, 0.0)
    batches, n_batches = sample_batches(model, config, data, split, args.every)
    model.train()
    cpu: dict[str, list[float]] = {"after": [], "before": []}
    for rep in range(args.repeats + 1):                 # pass 0 of each variant: warm-up, not kept
        for name in ("after", "before") if rep % 2 == 0 else ("before", "after"):
            DecoupledScorer.forward = FUSED if name == "after" else per_stream
            start = time.process_time()
            for batch in batches:
                train_step(model, optimizer, batch, True)
            spent = time.process_time() - start
            if rep:
                cpu[name].append(spent)
            print(f"  pass {rep} {name:6s} cpu {spent:7.2f} s", flush=True)
    DecoupledScorer.forward = FUSED
    for name, times in cpu.items():
        step = min(times) / len(batches)
        print(f"{name:6s} min cpu/step {step * 1e3:7.1f} ms; epoch extrapolated {step * n_batches:6.1f} s cpu")
    print(f"ratio after / before: {min(cpu['after']) / min(cpu['before']):.2f} ({len(batches)} of {n_batches} "
          f"first-epoch batches per pass, fusion {args.fusion}, bf16)")


if __name__ == "__main__":
    main()
