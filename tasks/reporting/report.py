"""The run's markdown report (report.md in MLflow, a Prefect markdown artifact)."""

from __future__ import annotations

from tasks.evaluation.comparison import Comparison


def condition_table(comparison: Comparison) -> list[dict[str, object]]:
    """Rows for a per-condition table: FP16, INT8 and the gap in mAP points."""
    return [
        {
            "condition": condition,
            "fp16_map": round(comparison.fp16.per_condition[condition], 4),
            "int8_map": round(comparison.int8.per_condition[condition], 4),
            "gap": round(gap, 4),
        }
        for condition, gap in comparison.per_condition_gap.items()
    ]


def render_report(
    *,
    title: str,
    comparison: Comparison,
    strategy: str,
    k: int,
    range_estimator: str,
    spend_eur: float,
    calls: int,
    cache_hit_rate: float,
    spearman: float | None,
    flagged_layers: list[tuple[str, float]],
    mlflow_link: str,
) -> str:
    ratio = comparison.throughput_ratio
    lines = [
        f"# {title}",
        "",
        f"INT8 mAP@[.5:.95] **{comparison.int8.map:.4f}** vs FP16 **{comparison.fp16.map:.4f}**: "
        f"gap **{comparison.gap:+.4f}** (mAP@.5 gap {comparison.gap50:+.4f}).",
        f"Calibration: `{strategy}`, K={k}, range estimator `{range_estimator}`.",
        f"Scoring: {calls} paid calls, cache hit rate {cache_hit_rate:.1%}, spend €{spend_eur:.4f}"
        + (f", Spearman between passes {spearman:.3f}." if spearman is not None else "."),
        f"Speed: INT8 {comparison.int8.throughput_ips or 0:.0f} img/s vs FP16 {comparison.fp16.throughput_ips or 0:.0f}"
        + (f" ({ratio:.2f}×)." if ratio else "."),
        "",
        "## Per condition (mAP@[.5:.95])",
        "",
        "| condition | FP16 | INT8 | gap |",
        "|---|---:|---:|---:|",
        *[
            f"| {r['condition']} | {r['fp16_map']:.4f} | {r['int8_map']:.4f} | {r['gap']:+.4f} |"
            for r in condition_table(comparison)
        ],
        "",
        "## Activation clipping",
        "",
        (
            "Layers clipping more than the threshold: "
            + ", ".join(f"`{name}` {100 * fraction:.2f} %" for name, fraction in flagged_layers)
            if flagged_layers
            else "No layer clips more than the threshold."
        ),
        "",
        f"MLflow run: {mlflow_link}",
        "",
    ]
    return "\n".join(lines)
