"""Does the scale of the frozen dense features decide what a fusion strategy gets out of them? (issue 25)

Trains one configuration with every dense modality table (image, text, ...) rescaled before the model
sees it, into a folder of its own per scaling (``DIR/results.db``). The rescaling is not part of the
run's config, and a store keeps checkpoints and weights beside it named by config hash, so runs with and
without it must never share a store or its folder; the probe refuses a folder holding another store.

- ``l2``: each item's vector divided by its L2 norm, :math:`f(v) / \\lVert f(v) \\rVert_2`;
- ``std``: each dimension centred and divided by its standard deviation over the items that have the
  modality, :math:`(f_j(v) - \\mu_j) / \\sigma_j`;
- ``none``: as stored (the same run ``fusionbench run`` makes).

Why: EfficientNet-Lite0's pooled features have norm ≈ 17 and mean 0.22 per dimension over 1,280
dimensions, the text encoder's ≈ 1 over 384, so with Adam a step of the image projection moves its
output about ten times as far as a step of the text projection or of an ID embedding.

    python reports/feature_scale_probe.py --scale l2 --dir runs/probe_l2 -- \\
        --strategy early --dataset toys --seed 0
(everything after ``--`` is ``fusionbench run``'s options).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fusionbench.features.tables as tables
from fusionbench.context import ModalityTable

SCALES = ("none", "l2", "std")


def rescale(table: ModalityTable, scale: str) -> ModalityTable:
    """The table with its dense features rescaled (absent rows stay zero; code tables unchanged)."""
    if scale == "none" or table.dim == 0:
        return table
    f = table.features.double()
    present = table.present
    if scale == "l2":
        f = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)
    else:
        mean, std = f[present].mean(0), f[present].std(0).clamp(min=1e-6)
        f = (f - mean) / std
    f[~present] = 0.0
    return ModalityTable(features=f.float(), present=present, codes=table.codes, n_codes=table.n_codes)


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="a folder for this scaling's store only")
    args = parser.parse_args(argv[:cut])
    others = [p.name for p in args.dir.glob("*.db") if p.name != "results.db"] if args.dir.exists() else []
    if others:
        parser.error(f"--dir {args.dir} holds another store ({others[0]}): its checkpoints and weights would "
                     "be shared by config hash")
    args.dir.mkdir(parents=True, exist_ok=True)
    original = tables.modality_tables

    def scaled(*a, **kw):
        built = original(*a, **kw)
        for name, table in built.items():
            if table.dim:
                norms = table.features[table.present].norm(dim=1)
                print(f"{name}: {table.dim}-d, item norm median {norms.median():.2f} before '{args.scale}'",
                      file=sys.stderr)
        return {name: rescale(table, args.scale) for name, table in built.items()}

    tables.modality_tables = scaled
    from fusionbench.cli import main as cli

    cli(["run", "--store", str(args.dir / "results.db"), *argv[cut + 1:]])


if __name__ == "__main__":
    main()
