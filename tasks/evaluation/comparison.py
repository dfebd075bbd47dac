"""FP16 vs INT8: the gap the product exists to keep small, overall and per condition, and, given
the weights-only INT8 model (activations in float, `tasks.calibration.decomposition`), its split
into a weight part (FP16 − weights-only) and an activation part (weights-only − INT8); and the
chosen calibration set's INT8 model beside a baseline's (`BaselineComparison`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tasks.evaluation.bootstrap import Interval, paired_gap_difference
from tasks.evaluation.evaluate import EvalResult


@dataclass(frozen=True)
class Comparison:
    """Two evaluations on one split, and optionally the weights-only model's; gaps in mAP units."""

    fp16: EvalResult
    int8: EvalResult
    weights_only: EvalResult | None = None

    @property
    def gap(self) -> float:
        """mAP@[.5:.95] points lost by INT8 (positive = INT8 worse)."""
        return self.fp16.map - self.int8.map

    @property
    def gap50(self) -> float:
        return self.fp16.map50 - self.int8.map50

    @property
    def per_condition_gap(self) -> dict[str, float]:
        return _gaps(self.fp16.per_condition, self.int8.per_condition)

    @property
    def per_class_gap(self) -> dict[str, float]:
        return _gaps(self.fp16.per_class, self.int8.per_class)

    @property
    def weight_gap(self) -> float | None:
        """FP16 − weights-only mAP@[.5:.95]: what rounding the weights costs (None: not measured)."""
        return None if self.weights_only is None else self.fp16.map - self.weights_only.map

    @property
    def activation_gap(self) -> float | None:
        """Weights-only − INT8 mAP@[.5:.95]: what quantizing activations costs, the part calibration sets."""
        return None if self.weights_only is None else self.weights_only.map - self.int8.map

    @property
    def per_condition_weight_gap(self) -> dict[str, float]:
        return {} if self.weights_only is None else _gaps(self.fp16.per_condition, self.weights_only.per_condition)

    @property
    def per_condition_activation_gap(self) -> dict[str, float]:
        return {} if self.weights_only is None else _gaps(self.weights_only.per_condition, self.int8.per_condition)

    @property
    def throughput_ratio(self) -> float | None:
        if not self.fp16.throughput_ips or not self.int8.throughput_ips:
            return None
        return self.int8.throughput_ips / self.fp16.throughput_ips

    def metrics(self) -> dict[str, float | None]:
        """Flat metric names for MLflow; `gap_part.*` only with the weights-only model."""
        values: dict[str, float | None] = {
            "fp16.map": self.fp16.map,
            "fp16.map50": self.fp16.map50,
            "int8.map": self.int8.map,
            "int8.map50": self.int8.map50,
            "gap.map": self.gap,
            "gap.map50": self.gap50,
            "fp16.latency_ms": self.fp16.latency_ms,
            "int8.latency_ms": self.int8.latency_ms,
            "int8_vs_fp16.throughput_ratio": self.throughput_ratio,
        }
        for condition, gap in self.per_condition_gap.items():
            values[f"gap.map.{condition}"] = gap
            values[f"fp16.map.{condition}"] = self.fp16.per_condition[condition]
            values[f"int8.map.{condition}"] = self.int8.per_condition[condition]
            if condition in self.fp16.condition_images:
                values[f"eval.images.{condition}"] = self.fp16.condition_images[condition]
        for name, gap in self.per_class_gap.items():
            values[f"gap.map.class.{name}"] = gap
        if self.weights_only is not None:
            values |= {
                "weights_only.map": self.weights_only.map,
                "gap_part.weights": self.weight_gap,
                "gap_part.activations": self.activation_gap,
            }
            for condition, gap in self.per_condition_weight_gap.items():
                values[f"gap_part.weights.{condition}"] = gap
            for condition, gap in self.per_condition_activation_gap.items():
                values[f"gap_part.activations.{condition}"] = gap
        return values


@dataclass(frozen=True)
class BaselineComparison:
    """The chosen set's INT8 model beside a baseline strategy's (`evaluation.baseline`), both
    quantized the same way at the same K and evaluated on one split; mAP@[.5:.95] units.

    `difference` is gap(chosen) − gap(baseline) (negative: the chosen set loses less) with its
    paired bootstrap interval over the eval images; None when a result carries no per-image matches.
    """

    strategy: str
    k: int
    fp16: EvalResult
    chosen: EvalResult
    baseline: EvalResult
    difference: Interval | None

    @classmethod
    def of(
        cls,
        strategy: str,
        k: int,
        fp16: EvalResult,
        chosen: EvalResult,
        baseline: EvalResult,
        resamples: int,
        seed: int,
    ) -> BaselineComparison:
        """Compare, drawing `resamples` resamples of the eval images with `seed` for the interval.
        Raises BootstrapError (tasks.evaluation.bootstrap) when the results come from different splits."""
        matches = (fp16.matches, chosen.matches, baseline.matches)
        difference = None
        if all(m is not None for m in matches):
            difference = paired_gap_difference(*matches, resamples=resamples, seed=seed)
        return cls(strategy, k, fp16, chosen, baseline, difference)

    @property
    def versus_fp16(self) -> Comparison:
        """The baseline's INT8 model against FP16, with Comparison's gaps."""
        return Comparison(self.fp16, self.baseline)

    @property
    def gap(self) -> float:
        """The baseline's gap, FP16 − its INT8 mAP (positive: INT8 worse)."""
        return self.versus_fp16.gap

    @property
    def chosen_gap(self) -> float:
        return Comparison(self.fp16, self.chosen).gap

    def metrics(self) -> dict[str, float]:
        """`baseline.<strategy>.*` for MLflow: its INT8 mAP, gap (overall, @.5, per condition) and the
        difference gap(chosen) − gap(baseline) with its interval bounds."""
        prefix = f"baseline.{self.strategy}"
        values = {
            f"{prefix}.k": float(self.k),
            f"{prefix}.int8.map": self.baseline.map,
            f"{prefix}.gap.map": self.gap,
            f"{prefix}.gap.map50": self.versus_fp16.gap50,
            f"{prefix}.gap_difference": self.chosen_gap - self.gap,
        }
        for condition, gap in self.versus_fp16.per_condition_gap.items():
            values[f"{prefix}.gap.map.{condition}"] = gap
        if self.difference is not None:
            values |= self.difference.metrics(f"{prefix}.gap_difference")
        return values

    def describe(self, chosen_strategy: str) -> str:
        """`gap +0.0053 (hard_tail_mix) vs +0.0091 (first_n, INT8 0.5550): difference -0.0038 [...] (...)`."""
        line = (
            f"gap {self.chosen_gap:+.4f} ({chosen_strategy}) vs {self.gap:+.4f} ({self.strategy}, same K={self.k}, "
            f"INT8 {self.baseline.map:.4f}): difference "
        )
        if self.difference is None:
            return line + f"{self.chosen_gap - self.gap:+.4f} (no interval: per-image matches missing)"
        return line + (
            f"{self.difference.describe()} ({100 * self.difference.confidence:.0f} % paired bootstrap over the "
            f"{self.baseline.images} eval images; negative: {chosen_strategy} loses less)"
        )


def _gaps(fp: dict[str, float], int8: dict[str, float]) -> dict[str, float]:
    """Per-key gaps, leaving out keys without ground truth (NaN)."""
    return {
        key: fp[key] - int8[key]
        for key in sorted(fp)
        if key in int8 and not math.isnan(fp[key]) and not math.isnan(int8[key])
    }
