"""The core claim, measured where it can be true and where it cannot.

    .venv/bin/python bench/claim.py                       # both benchmarks, the whole grid
    .venv/bin/python bench/claim.py --only realistic --seeds 0 --ks 64
    .venv/bin/python bench/claim.py --only realistic --bias-corrections fast none   # NNCF's bias correction on/off
    .venv/bin/python bench/claim.py --no-gap-decomposition    # one evaluation less per cell, no activation part
    .venv/bin/python bench/claim.py --only realistic --data-seeds 11 12 13   # three archives: how first_n varies

Runs the ablation (`tailcal ablate`) on two benchmarks:
- realistic (configs/claim.yaml): the pool in capture order with conditions in runs (night
  shifts, a dirty lens for a day), and production — the eval split — seeing the hard
  conditions far more often than the archive pool;
- iid (configs/claim-iid.yaml): each frame's condition drawn independently, the eval split
  drawn from the pool's own mix.

Grid: first_n (the users' default: NNCF's subset_size=300 and Ultralytics' export take the
first N), random, stratified, hard_tail_mix, coverage, and hard_tail_mix[factors] (grouped
by the VLM's tags, as on a pool without a condition column); K ∈ {16, 64, 300}; MEAN_MINMAX
and MINMAX; 3 seeds; NNCF's fast bias correction as configured (quantization.bias_correction),
or crossed with `--bias-corrections fast none`. Each table reports, per cell, the mean gap over seeds, its activation
part, and the paired bootstrap 95 % interval of its difference from first_n and random.

Then the goal, per K and estimator, for the configured strategy (selection.strategy): gap ≤
½ first_n's with the interval of the difference excluding 0, and no worse than random (the
interval of the difference from random does not lie above 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCHMARKS = {"realistic": "configs/claim.yaml", "iid": "configs/claim-iid.yaml"}
STRATEGIES = ["first_n", "random", "stratified", "hard_tail_mix", "coverage", "widest_ranges"]


def verdicts(rows, strategy: str) -> list[str]:
    """One line per (K, estimator, bias correction): does `strategy` meet the goal against first_n and random?"""
    lines = []
    crossed = len({row.bias_correction for row in rows}) > 1
    for row in rows:
        if row.strategy != strategy:
            continue
        key = (row.k, "first_n", row.estimator, row.bias_correction)
        first_n = next((r for r in rows if (r.k, r.strategy, r.estimator, r.bias_correction) == key), None)
        label = f"{row.estimator:<12}" + (f" bias {row.bias_correction:<4}" if crossed else "")
        versus_first, versus_random = row.versus.get("first_n"), row.versus.get("random")
        if first_n is None or versus_first is None or versus_random is None:
            lines.append(f"  K={row.k:<4} {label} n/a (first_n or random missing from the grid)")
            continue
        half = row.gap_mean <= 0.5 * first_n.gap_mean and first_n.gap_mean > 0
        beats = versus_first.high < 0
        not_worse = versus_random.low <= 0
        met = half and beats and not_worse
        lines.append(
            f"  K={row.k:<4} {label} {'MET    ' if met else 'not met'}  gap {row.gap_mean:+.4f} vs "
            f"first_n {first_n.gap_mean:+.4f} (½: {'yes' if half else 'no'}); Δ first_n {versus_first.describe()} "
            f"({'excludes 0' if versus_first.excludes_zero else 'includes 0'}); Δ random {versus_random.describe()}"
            f" ({'not worse' if not_worse else 'worse'})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--estimators", nargs="+", default=["MEAN_MINMAX", "MINMAX"])
    parser.add_argument(
        "--bias-corrections",
        nargs="+",
        choices=["fast", "none"],
        help="NNCF bias correction after PTQ (default: the config's quantization.bias_correction)",
    )
    parser.add_argument(
        "--gap-decomposition",
        action=argparse.BooleanOptionalAction,
        help="evaluate each cell's weights-only model for the activation part (default: the config's)",
    )
    parser.add_argument(
        "--factor-rows",
        nargs="*",
        help="strategies also run grouped by the VLM's factor tags (default: the config's "
        "selection.ablation_factor_rows); none given: no factor rows",
    )
    parser.add_argument(
        "--goal-strategy", help="the strategy the goal is checked for (default: the config's selection.strategy)"
    )
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--ks", nargs="+", default=["16", "64", "300"])
    parser.add_argument(
        "--data-seeds",
        nargs="+",
        type=int,
        help="run each benchmark once per archive: the pool and eval split generated with each seed "
        "(data.synthetic.seed; data in <data_dir>-seed<N>), then first_n's and each strategy's gap over archives",
    )
    args = parser.parse_args()

    from flows.cli import app
    from tasks.config import load_config

    runs = [(name, BENCHMARKS[name], None) for name in args.only or list(BENCHMARKS)]
    if args.data_seeds:
        runs = [(name, archive_config(path, seed), seed) for name, path, _ in runs for seed in args.data_seeds]
    by_archive: dict[str, list] = {}
    for name, config_path, data_seed in runs:
        strategy = args.goal_strategy or load_config(config_path).selection.strategy
        started = time.perf_counter()
        argv = ["ablate", "--config", config_path, "--strategies", *args.strategies, "--estimators", *args.estimators]
        argv += ["--bias-corrections", *args.bias_corrections] if args.bias_corrections else []
        if args.factor_rows is not None:
            argv += ["--factor-rows", *args.factor_rows]
        if args.gap_decomposition is not None:
            argv += [f"--gap-decomposition={str(args.gap_decomposition).lower()}"]
        result = app([*argv, "--seeds", *args.seeds, "--ks", *args.ks], exit_on_error=True)
        minutes = (time.perf_counter() - started) / 60
        archive = "" if data_seed is None else f", archive seed {data_seed}"
        print(f"\n## {name} benchmark ({config_path}{archive}), {result.cells} cells in {minutes:.0f} min\n")
        print(result.table_markdown)
        print(f"goal for {strategy} (gap ≤ ½ first_n's, interval excluding 0, no worse than random):")
        print("\n".join(verdicts(result.rows, strategy)))
        print(f"table: {result.table_path}")
        by_archive.setdefault(name, []).append(result.rows)
    for name, archives in by_archive.items():
        if len(archives) > 1:
            print(f"\n## {name}: gap over {len(archives)} archives (mean ± std of each archive's mean over seeds)\n")
            print(over_archives(archives))


def archive_config(config_path: str, seed: int) -> str:
    """A copy of `config_path` whose pool and eval split are generated with `seed`, in a data
    directory of their own (scored once, reused on a rerun); its path."""
    import tempfile

    import yaml

    tree = yaml.safe_load(Path(config_path).read_text())
    tree["data"]["synthetic"]["seed"] = seed
    tree["data"]["data_dir"] = f"{tree['data']['data_dir']}-seed{seed}"
    tracking = tree.setdefault("tracking", {})
    tracking["experiment"] = f"{tracking.get('experiment', 'tailcal')}-seed{seed}"
    out = Path(tempfile.gettempdir()) / f"tailcal-{Path(config_path).stem}-seed{seed}.yaml"
    out.write_text(yaml.safe_dump(tree))
    return str(out)


def over_archives(archives: list[list]) -> str:
    """Markdown: per K, estimator and strategy, the gap's mean ± std over archives, and in how many
    archives the strategy lost less than first_n with the interval of the difference excluding 0."""
    import statistics

    keys = sorted({(r.k, r.estimator, r.bias_correction, r.strategy) for rows in archives for r in rows})
    lines = [
        "| K | estimator | bias correction | strategy | archives | gap mean ± std | beat first_n (interval < 0) |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for key in keys:
        k, estimator, bias, strategy = key
        rows = [r for rows in archives for r in rows if (r.k, r.estimator, r.bias_correction, r.strategy) == key]
        gaps = [r.gap_mean for r in rows]
        spread = statistics.stdev(gaps) if len(gaps) > 1 else float("nan")
        wins = sum(1 for r in rows if (v := r.versus.get("first_n")) is not None and v.high < 0)
        beat = "(reference)" if strategy == "first_n" else f"{wins} of {len(rows)}"
        lines.append(
            f"| {k} | {estimator} | {bias} | {strategy} | {len(rows)} | {statistics.mean(gaps):+.4f} ± {spread:.4f} |"
            f" {beat} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
