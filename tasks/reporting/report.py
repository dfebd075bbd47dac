"""The run's markdown report (report.md in MLflow, a Prefect markdown artifact)."""

from __future__ import annotations

from tasks.calibration.decomposition import GapDecomposition
from tasks.evaluation.comparison import BaselineComparison, Comparison


def condition_table(comparison: Comparison) -> list[dict[str, object]]:
    """Rows for a per-condition table: FP16, INT8 and the gap in mAP units, rounded to 4 decimals;
    with the weights-only model, also its mAP and the gap's weight and activation parts."""
    weight_parts, activation_parts = comparison.per_condition_weight_gap, comparison.per_condition_activation_gap
    rows = []
    for condition, gap in comparison.per_condition_gap.items():
        row: dict[str, object] = {
            "condition": condition,
            "fp16_map": round(comparison.fp16.per_condition[condition], 4),
            "int8_map": round(comparison.int8.per_condition[condition], 4),
            "gap": round(gap, 4),
        }
        if condition in weight_parts and condition in activation_parts:
            row |= {
                "weights_only_map": round(comparison.weights_only.per_condition[condition], 4),
                "weight_part": round(weight_parts[condition], 4),
                "activation_part": round(activation_parts[condition], 4),
            }
        rows.append(row)
    return rows


def _condition_lines(comparison: Comparison) -> list[str]:
    rows = condition_table(comparison)
    if comparison.weights_only is None:
        return [
            "| condition | FP16 | INT8 | gap |",
            "|---|---:|---:|---:|",
            *[f"| {r['condition']} | {r['fp16_map']:.4f} | {r['int8_map']:.4f} | {r['gap']:+.4f} |" for r in rows],
        ]
    return [
        "| condition | FP16 | weights-only | INT8 | gap | weight part | activation part |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['condition']} | {r['fp16_map']:.4f} | {r.get('weights_only_map', float('nan')):.4f} | "
            f"{r['int8_map']:.4f} | {r['gap']:+.4f} | {r.get('weight_part', float('nan')):+.4f} | "
            f"{r.get('activation_part', float('nan')):+.4f} |"
            for r in rows
        ],
    ]


def _decomposition_lines(comparison: Comparison, decomposition: GapDecomposition | None) -> list[str]:
    if decomposition is None or comparison.weights_only is None:
        return []
    weight, activation = decomposition.weight_part, decomposition.activation_part
    if weight is not None and activation is not None:
        parts = (
            f"weight part **{weight.describe()}**, activation part **{activation.describe()}** "
            f"({100 * weight.confidence:.0f} % paired bootstrap interval over the {comparison.int8.images} eval "
            f"images, {weight.resamples} resamples)."
        )
    else:
        parts = f"weight part **{comparison.weight_gap:+.4f}**, activation part **{comparison.activation_gap:+.4f}**."
    lines = [
        "## Where the gap comes from",
        "",
        f"Weights-only INT8 (the INT8 weights, activations in float) reaches mAP@[.5:.95] "
        f"**{comparison.weights_only.map:.4f}**: " + parts,
    ]
    if (rounded := decomposition.rounded_weights) is not None:
        bias = decomposition.bias_correction_part
        share = bias.describe() if bias is not None else f"{rounded.map - comparison.weights_only.map:+.4f}"
        lines.append(
            f"With the FP model's biases put back, the rounded weights alone reach **{rounded.map:.4f}**: "
            f"NNCF's bias correction accounts for **{share}** of the weight part."
        )
    lines += [
        "The calibration set decides the activation part (its images set the activation ranges) and the "
        "bias correction (fitted on its images); weight rounding does not depend on it.",
        "",
    ]
    if decomposition.quantizers:
        lines += [
            f"Activation quantizers measured alone (weights-only plus that one; the {len(decomposition.quantizers)} "
            f"of {decomposition.activation_quantizers} that clip most). Parts of single quantizers need not add up "
            "to the activation part.",
            "",
            "| quantizer | clipped | mAP with it alone | its part |",
            "|---|---:|---:|---:|",
            *[
                f"| `{q.name}` | {100 * q.clipped_fraction:.2f} % | {q.map_alone:.4f} | {q.part:+.4f} |"
                for q in decomposition.quantizers
            ],
            "",
        ]
    return lines


def _baseline_lines(strategy: str, baseline: BaselineComparison | None) -> list[str]:
    if baseline is None:
        return []
    difference = baseline.difference
    shown = difference.describe() if difference else f"{baseline.chosen_gap - baseline.gap:+.4f}"
    how = (
        f" ({100 * difference.confidence:.0f} % paired bootstrap interval over the {baseline.baseline.images} eval "
        f"images, {difference.resamples} resamples)"
        if difference
        else ""
    )
    return [
        f"Baseline `{baseline.strategy}` (same K, quantized the same way): INT8 "
        f"**{baseline.baseline.map:.4f}**, gap **{baseline.gap:+.4f}**; `{strategy}`'s gap − its gap: "
        f"**{shown}**{how}.",
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
    decomposition: GapDecomposition | None = None,
    baseline: BaselineComparison | None = None,
    bias_correction: str = "fast",
) -> str:
    """The report in markdown; gaps in mAP@[.5:.95] units (positive: INT8 worse)."""
    ratio = comparison.throughput_ratio
    lines = [
        f"# {title}",
        "",
        f"INT8 mAP@[.5:.95] **{comparison.int8.map:.4f}** vs FP16 **{comparison.fp16.map:.4f}**: "
        f"gap **{comparison.gap:+.4f}** (mAP@.5 gap {comparison.gap50:+.4f}).",
        f"Calibration: `{strategy}`, K={k}, range estimator `{range_estimator}`, bias correction `{bias_correction}`.",
        *_baseline_lines(strategy, baseline),
        f"Scoring: {calls} paid calls, cache hit rate {cache_hit_rate:.1%}, spend €{spend_eur:.4f}"
        + (f", Spearman between passes {spearman:.3f}." if spearman is not None else "."),
        f"Speed: INT8 {comparison.int8.throughput_ips or 0:.0f} img/s vs FP16 {comparison.fp16.throughput_ips or 0:.0f}"
        + (f" ({ratio:.2f}×)." if ratio else "."),
        "",
        "## Per condition (mAP@[.5:.95])",
        "",
        *_condition_lines(comparison),
        "",
        *_decomposition_lines(comparison, decomposition),
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
