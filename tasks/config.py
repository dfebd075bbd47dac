"""One validated configuration tree, loaded from YAML once at start.

Secrets and endpoints never live in YAML: they come from the environment (`RuntimeEnv`),
so a config file can be committed, logged to MLflow and passed to Prefect safely.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.errors import ConfigError
from tasks.redaction import mask_url

SelectionStrategy = Literal["first_n", "topk", "random", "stratified", "hard_tail_mix", "coverage", "widest_ranges"]
# Strategies that read the pool's activation profiles (one more pass of the FP IR over the pool).
NEEDS_PROFILES: frozenset[str] = frozenset({"coverage", "widest_ranges"})
# How stratified sampling groups the pool: by its condition column, or by the VLM's factor tags.
Grouping = Literal["auto", "condition", "factors"]
# The strategies that group the pool (stratified sampling or a stratified fill).
GroupingStrategy = Literal["stratified", "hard_tail_mix", "coverage"]
# Capture conditions of the synthetic benchmark (tasks/synth/render.py draws them in this order).
SyntheticCondition = Literal[
    "normal", "low_contrast", "sensor_noise", "motion_blur", "low_light", "overexposure", "occlusion"
]
RangeEstimator = Literal["MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM"]
# NNCF's bias correction after PTQ: its fast algorithm, or none (NNCF's disable_bias_correction).
BiasCorrection = Literal["fast", "none"]

# Keys people paste into YAML by habit; the error points them at the environment instead.
_SECRET_LIKE_KEYS = {"api_key", "key", "virtual_key", "password", "secret", "token"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yaml_booleans_where_none_belong(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML 1.1 reads an unquoted yes/no/on/off as a boolean, and pydantic would quietly turn
        # `k: yes` into K=1 (or `metrics_port: yes` into port 1): a boolean only goes where one belongs.
        if isinstance(value, bool) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(
                "YAML reads an unquoted yes, no, on or off as true/false, and this setting takes no true/false: "
                "quote the word you meant, or write the number"
            )
        return value


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type accepts a boolean (bool itself, inside a union or Literal)."""
    if annotation is bool:
        return True
    return any(arg is bool or arg is True or arg is False or _takes_bool(arg) for arg in get_args(annotation))


class SyntheticConfig(_Strict):
    """Sizes, seed, pool order and condition mixes of the generated industrial-defect benchmark
    (the offline default data). `tasks/synth/schedule.py` describes the `runs` ordering."""

    seed: int = Field(0, ge=0, description="numpy seeds are non-negative.")
    image_size: int = Field(
        192, ge=80, le=1024, description="Frame side in px; 80 or more: a crack is drawn up to 40 px from its start."
    )
    pool_size: int = Field(2000, ge=1)
    eval_size: int = Field(500, ge=1)
    train_size: int = Field(0, ge=0)
    pool_image_mode: Literal["inline", "uri"] = "inline"
    burst_probability: float = Field(0.25, ge=0.0, le=1.0)
    max_burst: int = Field(5, ge=2, le=64)
    ordering: Literal["iid", "runs"] = Field(
        "iid",
        description="How the pool's conditions follow capture time: `iid` draws each scene's condition on its "
        "own; `runs` gives each line runs of one condition (a dirty lens, a line running fast) and makes "
        "`shared_conditions` hit every line at once (a night shift's failed lighting), with ids that name the "
        "line and scene, as camera frames are named.",
    )
    run_length: float = Field(40.0, ge=1.0, description="runs: mean scenes per line in one condition run.")
    shared_conditions: list[SyntheticCondition] = Field(
        ["low_light", "overexposure"],
        description="runs: conditions that hit every line at once; the others run on one line at a time.",
    )
    scene_interval_s: float = Field(
        2.0, gt=0.0, le=86_400.0, description="Seconds of capture time between consecutive scenes (all lines)."
    )
    conditions: dict[SyntheticCondition, float] | None = Field(
        None,
        description="The pool's (and train split's) condition mix as weights, normalised; a condition left out "
        "does not occur. Unset: the built-in long tail (normal 58 %, …, occlusion 4 %).",
    )
    eval_conditions: dict[SyntheticCondition, float] | None = Field(
        None,
        description="The eval split's condition mix (production's), as weights; unset: the pool's mix. "
        "Production often sees the hard conditions far more often than the archive pool does.",
    )

    @field_validator("conditions", "eval_conditions")
    @classmethod
    def _weights_make_a_mix(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        negative = sorted(name for name, w in weights.items() if not w >= 0.0)  # `not >=` also catches NaN
        if negative:
            raise ValueError(f"weights of {negative} are negative or NaN: give each condition a weight ≥ 0")
        if sum(weights.values()) <= 0.0:
            raise ValueError("the weights sum to 0: give at least one condition a positive weight")
        return weights


class DataConfig(_Strict):
    """Where local data and per-run artefacts live; `synthetic` generates it when absent.

    Relative paths in a config resolve from the working directory, once, at load.
    """

    data_dir: Path = Path("data/demo")
    synthetic: SyntheticConfig | None = SyntheticConfig()


class PoolConfig(_Strict):
    """The candidate pool: Parquet at a local path or `s3://bucket/prefix/`."""

    uri: str | None = Field(None, description="Defaults to <data_dir>/pool when unset (resolved at load).")
    subset_size: int | None = Field(None, ge=1, description="Deterministic sample for dry runs.")
    subset_seed: int = 0
    sources: list[str] | None = Field(None, min_length=1, description="Keep only these sources; unset: all.")
    captured_after: datetime | None = None
    captured_before: datetime | None = None
    fetch_concurrency: int = Field(16, ge=1, le=256)
    batch_rows: int = Field(512, ge=1, le=65536)
    fetch_retries: int = Field(3, ge=0, le=10, description="Retries per image on transient read errors.")
    max_image_bytes: int = Field(64 * 2**20, ge=1, description="Larger image objects are skipped, never read whole.")
    max_image_pixels: int = Field(
        64_000_000,
        ge=1,
        description="Images whose header claims more pixels are skipped (decompression bombs); "
        "Pillow's own limit (~179 MP) applies above this.",
    )


class ModelPrice(_Strict):
    """A gateway model and its price in EUR per million tokens."""

    name: str = Field(min_length=1)
    input_eur_per_mtok: float = Field(ge=0.0)
    output_eur_per_mtok: float = Field(ge=0.0)
    max_output_tokens: int = Field(128, ge=16, le=4096)


class GatewayConfig(_Strict):
    """An OpenAI-compatible gateway URL, or `embedded` for the loopback reference scorer."""

    url: str = "embedded"
    models: list[ModelPrice] = Field(min_length=1)
    key_env: str = Field("TAILCAL_GATEWAY_KEY", description="Env var holding the virtual key.")
    timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="Seconds an attempt may wait on the network at any one point (connecting, each read); then it "
        "is retried as a timeout.",
    )
    reply_deadline_s: float | None = Field(
        None,
        gt=0.0,
        le=14400.0,
        description="Seconds an attempt may take from sending to the last byte of the reply, however steadily the "
        "bytes come (a gateway trickling its reply resets timeout_s with every chunk); unset: 4 × timeout_s.",
    )
    max_retries: int = Field(3, ge=0, le=10)
    max_image_side: int = Field(512, ge=32, le=4096)
    concurrency: int = Field(
        32,
        ge=1,
        le=1024,
        description="Requests in flight at the gateway per process (send to the reply's last byte), shared by shards.",
    )
    rpm: int | None = Field(None, ge=1)
    max_identical_errors: int = Field(
        20,
        ge=1,
        description="Stop scoring (GatewayError) after this many identical non-retryable failures in a row "
        "(e.g. HTTP 400 for a request parameter, a reply cut at the length limit), counted across the "
        "process's shards; a scored call resets the count.",
    )

    @property
    def attempt_deadline_s(self) -> float:
        """Seconds one attempt may take in all: reply_deadline_s, else 4 × timeout_s."""
        return self.reply_deadline_s if self.reply_deadline_s is not None else 4 * self.timeout_s

    @field_validator("url")
    @classmethod
    def _url_is_http_or_embedded(cls, url: str) -> str:
        if url != "embedded" and not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be 'embedded' or start with http:// or https://, got {mask_url(url)!r}")
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError(
                "url holds credentials (user:password@): remove them and put the key in the environment "
                "variable gateway.key_env names (TAILCAL_GATEWAY_KEY by default); secrets never go in config files"
            )
        return url


class CacheConfig(_Strict):
    """Near-duplicate score cache: a hit when pHash distance ≤ floor(64·(1−similarity))."""

    similarity: float = Field(0.92, gt=0.5, le=1.0)
    ttl_hours: float = Field(168.0, gt=0.0)


class BudgetConfig(_Strict):
    """EUR cap per virtual key, shared by every process that uses the key."""

    cap_eur: float = Field(gt=0.0)
    alert_fraction: float = Field(0.8, gt=0.0, le=1.0)
    on_exhausted: Literal["cached_only", "fallback_model"] = "cached_only"
    fallback_model: str | None = None
    webhook_url: str | None = None

    @model_validator(mode="after")
    def _fallback_needs_model(self) -> BudgetConfig:
        if self.on_exhausted == "fallback_model" and not self.fallback_model:
            raise ValueError("on_exhausted is 'fallback_model' but fallback_model is not set: name a cheaper model")
        return self


class ScoringConfig(_Strict):
    """VLM difficulty scoring: prompt template, passes and sharding."""

    prompt: str = Field("difficulty-v1", pattern=r"^[a-z0-9_-]+-v\d+$")
    prompts_dir: Path = Field(Path("configs/prompts"), description="Where <prompt>.yaml templates live.")
    passes: int = Field(2, ge=1, le=8)
    base_seed: int = 0
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    shard_size: int = Field(512, ge=16, le=4096)
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus /metrics on 127.0.0.1.")
    metrics_ports: int = Field(
        1,
        ge=1,
        le=64,
        description="Consecutive ports from metrics_port that scoring processes may take: each process that scores "
        "(the flow run, every Dask worker, runs side by side on one machine) serves its own /metrics on the first "
        "free one. Prometheus scrapes the whole range.",
    )
    runner: Literal["threads", "dask"] = Field(
        "threads",
        description="Where shards run: threads of the flow's process, or Dask worker processes (the scheduler at "
        "TAILCAL_DASK_ADDRESS, else a local cluster of `dask_workers` processes).",
    )
    dask_workers: int = Field(
        2, ge=1, le=256, description="Worker processes of the local Dask cluster (two shards at a time each)."
    )
    max_failed_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Stop the run (GatewayError) after scoring when more than this share of the candidates got no "
        "score because the gateway failed them (5xx, timeouts, bad replies, retries included): selecting from "
        "what is left would quietly drop the images the gateway choked on. Budget-cut candidates do not count.",
    )

    @model_validator(mode="after")
    def _metrics_range_fits(self) -> ScoringConfig:
        if self.metrics_ports > 1 and not self.metrics_port:
            raise ValueError(
                f"scoring.metrics_ports is {self.metrics_ports} but scoring.metrics_port is unset, so nothing would "
                "be served: set metrics_port to the range's first port, or drop metrics_ports"
            )
        if self.metrics_port and self.metrics_port + self.metrics_ports - 1 > 65535:
            raise ValueError(
                f"scoring.metrics_port {self.metrics_port} with metrics_ports {self.metrics_ports} runs past port "
                "65535: lower either"
            )
        return self


class SelectionConfig(_Strict):
    """How the calibration set is chosen from the scored pool."""

    strategy: SelectionStrategy = "hard_tail_mix"
    k: int = Field(512, ge=1)
    seed: int = Field(0, ge=0, description="numpy seeds are non-negative.")
    hard_fraction: float = Field(0.5, ge=0.0, le=1.0)
    coverage_tail_quantile: float = Field(
        0.001,
        ge=0.0,
        lt=0.5,
        description="coverage targets each layer's [q, 1−q] quantile range of per-image min/max; 0 = full range.",
    )
    grouping: Grouping = Field(
        "auto",
        description="Strata of stratified sampling: `condition` (the pool's condition column), `factors` (the "
        "VLM's factor tags; each image in its rarest tag's stratum) or `auto` (condition when any candidate "
        "has one, else factors).",
    )
    ablation_factor_rows: list[GroupingStrategy] = Field(
        [],
        description="`tailcal ablate` only: strategies run once more with grouping `factors`, the condition "
        "column ignored as if the pool had none; their rows read `<strategy>[factors]`. Only strategies that "
        "group the pool: for the others such a row would repeat their own.",
    )

    @field_validator("ablation_factor_rows")
    @classmethod
    def _each_row_once(cls, rows: list[str]) -> list[str]:
        return list(dict.fromkeys(rows))


class DetectorConfig(_Strict):
    """The detector to quantize: a torchvision family and its checkpoint, or an exported model."""

    architecture: str = Field(
        "fcos_compact",
        description="torchvision family: fcos_compact, ssd300_vgg16, ssdlite320_mobilenet_v3_large, "
        "retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2, fcos_resnet50_fpn, fasterrcnn_mobilenet_v3_large_fpn, "
        "fasterrcnn_resnet50_fpn_v2. Ignored when `model` is set.",
    )
    num_classes: int = Field(4, ge=1, description="Object classes the detector predicts (never counting background).")
    input_size: int | None = Field(
        None,
        ge=32,
        le=2048,
        description="Square input side in pixels; unset: the family's standard size (fcos_compact 192, SSD300 300, "
        "SSDlite 320, the FPN families 800) or an exported model's own input size.",
    )
    resize: Literal["letterbox", "stretch"] = Field(
        "letterbox",
        description="How images of other sizes are fit to the square input: pad to keep aspect, or stretch.",
    )
    checkpoint: str = Field(
        "models/demo_detector.pt",
        description="state_dict of the torchvision family (plain, or under a 'model' key); unused with `model`.",
    )
    model: str | None = Field(
        None, description="An exported detector (.onnx, or OpenVINO .xml with its .bin) instead of a checkpoint."
    )
    output_format: Literal["yolov8", "yolov5", "end2end", "boxes_scores_labels"] | None = Field(
        None,
        description="Layout of the exported model's outputs: yolov8 (also YOLO11) [1, 4+nc, N]; yolov5 [1, N, 5+nc]; "
        "end2end [1, N, 6] (x1 y1 x2 y2 score class, NMS inside); boxes_scores_labels (three outputs).",
    )

    @model_validator(mode="after")
    def _exported_model_declares_its_layout(self) -> DetectorConfig:
        if self.model and self.output_format is None:
            raise ValueError(
                "detector.model is set but detector.output_format is not: declare the layout of its outputs "
                "(yolov8, yolov5, end2end or boxes_scores_labels)"
            )
        if self.output_format and not self.model:
            raise ValueError(
                "detector.output_format is set but detector.model is not: point model at the exported file"
            )
        return self


class QuantizationConfig(_Strict):
    """NNCF post-training quantization knobs."""

    preset: Literal["performance", "mixed"] | None = Field(
        None,
        description="NNCF preset; unset: the detector layout's own (performance for torchvision families, "
        "mixed for exported YOLO-style models).",
    )
    range_estimator: RangeEstimator = "MEAN_MINMAX"
    bias_correction: BiasCorrection = Field(
        "fast",
        description="`fast`: NNCF's fast bias correction (its default) shifts each quantized layer's bias so its "
        "mean output on the calibration images matches the FP model's — the calibration set then sets the "
        "activation ranges and those bias shifts. `none` (NNCF's disable_bias_correction): the INT8 model keeps "
        "the FP biases, so the calibration set only sets the activation ranges.",
    )
    accuracy_control: bool = False
    max_drop: float = Field(0.01, gt=0.0, le=1.0)


class EvaluationConfig(_Strict):
    """Labelled evaluation split (COCO JSON + images); defaults to <data_dir>/eval (resolved at load)."""

    dataset_dir: Path | None = None
    label_map: list[int] | None = Field(
        None,
        min_length=1,
        description="COCO category id of each detector label (label i → label_map[i]); unset: the split's "
        "category ids sorted ascending. Checked against the split and detector.num_classes when the split loads.",
    )
    latency_iterations: int = Field(50, ge=1)
    clipping_images: int = Field(64, ge=1, description="Eval images run through the FP IR for clipping %.")
    clipping_flag_fraction: float = Field(0.01, gt=0.0, lt=1.0, description="Flag layers clipping more than this.")
    gap_decomposition: bool = Field(
        True,
        description="Also evaluate the weights-only INT8 model (activations in float): the gap's weight and "
        "activation parts.",
    )
    attributed_quantizers: int = Field(
        1, ge=0, description="Activation quantizers, worst clipping first, whose part of the gap is measured alone."
    )
    bootstrap_resamples: int = Field(
        1000, ge=100, description="Resamples of the eval images behind each paired 95 % interval."
    )
    bootstrap_seed: int = Field(0, ge=0, description="Seed of those resamples.")
    baseline: Literal["first_n", "none"] = Field(
        "none",
        description="`tailcal run` also quantizes on this strategy's pick at the same K, estimator and bias "
        "correction (one more PTQ and evaluation, no gap split) and reports its gap beside the chosen set's, "
        "with the paired 95 % interval of the difference. `first_n`: the first K of the pool, what NNCF and "
        "Ultralytics do by default. `none`: no baseline (a big detector's extra PTQ can take minutes).",
    )

    @field_validator("label_map")
    @classmethod
    def _one_category_per_label(cls, label_map: list[int] | None) -> list[int] | None:
        if label_map is not None and (repeated := sorted({i for i in label_map if label_map.count(i) > 1})):
            raise ValueError(f"category ids {repeated} repeat: each detector label needs its own category")
        return label_map


class TrackingConfig(_Strict):
    """MLflow experiment; the tracking URI comes from MLFLOW_TRACKING_URI or the local default."""

    experiment: str = Field("tailcal", min_length=1)


class ServingConfig(_Strict):
    """Precision routing of the inference service (`python -m tasks.serving`)."""

    ir_dir: Path | None = Field(
        None, description="Directory with detector_int8.xml / detector_int8_ac.xml / detector_fp16.xml."
    )
    int8_ir: Path | None = None
    mixed_ir: Path | None = Field(None, description="Accuracy-controlled IR (optional tier).")
    fp16_ir: Path | None = None
    categories: Path | None = Field(
        None,
        description="categories.json of the release (label → COCO category id and name); unset: the one in ir_dir, "
        "else beside the int8 (or fp16) IR. Without one, detections carry the detector's label index only.",
    )
    priority_fp16_min: int = Field(8, ge=1, le=10, description="X-Priority at or above this → fp16.")
    priority_int8_max: int = Field(2, ge=0, le=10, description="X-Priority at or below this → int8 (0: never).")
    medium_difficulty: float = Field(0.5, ge=0.0, le=1.0, description="Difficulty at or above → mixed tier.")
    hard_difficulty: float = Field(0.7, ge=0.0, le=1.0, description="Difficulty at or above → fp16 tier.")
    default_tier: Literal["int8", "mixed", "fp16"] = "fp16"
    latency_ewma_alpha: float = Field(0.1, gt=0.0, le=1.0)
    warmup_requests: int = Field(5, ge=1, le=1000)
    infer_requests_per_tier: int = Field(2, ge=1, le=64, description="Concurrent OpenVINO requests per tier.")
    threads_per_request: int | None = Field(None, ge=1, le=256, description="INFERENCE_NUM_THREADS; unset: auto.")
    max_image_bytes: int = Field(8 * 2**20, ge=1)
    max_image_pixels: int = Field(16_000_000, ge=1)
    min_score: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Answer only detections scoring at or above this. The decoders keep what mAP needs (≥ 0.001 for "
        "exported YOLO layouts, the family's own score_thresh for torchvision's), below what an application acts on.",
    )
    max_detections: int | None = Field(
        None, ge=1, description="Answer at most this many detections per image, highest scores first; unset: all kept."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ServingConfig:
        if self.medium_difficulty > self.hard_difficulty:
            raise ValueError(
                f"medium_difficulty {self.medium_difficulty} > hard_difficulty {self.hard_difficulty}: "
                "the mixed band must sit below the fp16 band"
            )
        if self.priority_int8_max >= self.priority_fp16_min:
            raise ValueError("priority_int8_max must be below priority_fp16_min")
        return self


class DriftConfig(_Strict):
    """Calibration drift monitor: PSI per feature, production sample vs calibration set."""

    bins: int = Field(10, ge=2, le=100, description="Quantile bins of the reference for continuous features.")
    epsilon: float = Field(1e-4, gt=0.0, lt=0.1, description="Floor for empty-bin proportions.")
    psi_threshold: float = Field(0.25, gt=0.0, description="Any feature above → recalibrate.")
    production_uri: str | None = Field(
        None,
        description="Where production frames land (Parquet path or s3:// URI): the monitor samples them and compares "
        "them with the release's calibration data. Required by `tailcal drift`, here or as --production-uri.",
    )
    production_subset_size: int | None = Field(1000, ge=1, description="Rows sampled from the production pool.")
    min_samples: int = Field(30, ge=2, description="Fewer rows on either side → no verdict (error).")


class ScoringSetup(_Strict):
    """What the scoring stage reads: its own section and the gateway, cache and budget it scores through.

    Not a YAML section: `TailcalConfig.scoring_setup` assembles it from the four sections.
    """

    scoring: ScoringConfig
    gateway: GatewayConfig
    cache: CacheConfig
    budget: BudgetConfig


class TailcalConfig(_Strict):
    """The whole configuration of one tailcal run.

    Stages never receive this tree: each takes its own section (or `ScoringSetup`). Defaults
    that depend on other keys (`pool.uri`, `evaluation.dataset_dir`) and relative paths are
    resolved here, once, so every stage sees the same absolute values.
    """

    data: DataConfig = DataConfig()
    pool: PoolConfig = PoolConfig()
    gateway: GatewayConfig
    cache: CacheConfig = CacheConfig()
    budget: BudgetConfig
    scoring: ScoringConfig = ScoringConfig()
    selection: SelectionConfig = SelectionConfig()
    detector: DetectorConfig = DetectorConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    serving: ServingConfig = ServingConfig()
    drift: DriftConfig = DriftConfig()

    @model_validator(mode="after")
    def _resolve_paths(self) -> TailcalConfig:
        # The sections are frozen; these copies are made once, before anyone reads them.
        data_dir = self.data.data_dir.resolve()
        resolved = {
            "data": self.data.model_copy(update={"data_dir": data_dir}),
            "pool": self.pool.model_copy(update={"uri": self.pool.uri or str(data_dir / "pool")}),
            "scoring": self.scoring.model_copy(update={"prompts_dir": self.scoring.prompts_dir.resolve()}),
            "evaluation": self.evaluation.model_copy(
                update={"dataset_dir": (self.evaluation.dataset_dir or data_dir / "eval").resolve()}
            ),
        }
        for name, section in resolved.items():
            object.__setattr__(self, name, section)
        return self

    @model_validator(mode="after")
    def _warn_widest_ranges_under_minmax(self) -> TailcalConfig:
        # Measured on the realistic claim benchmark over three archives (README, "Does it beat
        # first_n?"): under MINMAX a layer's range is the union over the set, so the widest
        # images widen every layer's INT8 step, and the set loses more than first_n's.
        if self.selection.strategy == "widest_ranges" and self.quantization.range_estimator == "MINMAX":
            logging.getLogger(__name__).warning(
                "selection.strategy widest_ranges is built for averaged ranges (MEAN_MINMAX, NNCF's default): "
                "with quantization.range_estimator MINMAX its widest images widen every layer's INT8 step. "
                "Use MEAN_MINMAX with it, or another strategy with MINMAX"
            )
        return self

    @property
    def scoring_setup(self) -> ScoringSetup:
        return ScoringSetup(scoring=self.scoring, gateway=self.gateway, cache=self.cache, budget=self.budget)


class RuntimeEnv(BaseSettings):
    """Secrets and endpoints, read from the environment only; unset means the embedded default."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    redis_url: SecretStr | None = None
    mlflow_tracking_uri: str | None = None
    tailcal_s3_endpoint: str | None = None
    tailcal_dask_address: str | None = None  # a Dask scheduler (tcp://host:8786) for scoring.runner: dask


@dataclass(frozen=True)
class Override:
    """Marks a flow parameter (as `Annotated[..., Override("selection.k")]`) as an override of
    one dotted config key: given, it replaces the file's value; None leaves the file's."""

    key: str


def parameter_overrides(function: Callable, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """`{dotted key: value}` for each of `function`'s `Override`-annotated parameters given in `arguments`."""
    overrides = {}
    for name, hint in typing.get_type_hints(function, include_extras=True).items():
        marks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Override)]
        if marks and arguments.get(name) is not None:
            overrides[marks[0].key] = arguments[name]
    return overrides


def load_for(function: Callable, arguments: Mapping[str, Any]) -> TailcalConfig:
    """The config a flow runs on: `arguments["config_path"]` with its parameters' overrides applied.

    The flows call it first thing, and the command line calls it before starting one, so a
    bad file or a bad override fails before anything runs.
    """
    return load_config(arguments["config_path"], parameter_overrides(function, arguments))


Section = TypeVar("Section", bound=BaseModel)


def section_with(section: Section, source: str, **changes: Any) -> Section:
    """A copy of a config section with `changes`, validated like the file (model_copy is not).

    Raises ConfigError naming `source` (where the changes came from), the keys and values refused.
    """
    try:
        return type(section).model_validate(section.model_dump() | changes)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TailcalConfig:
    """Read, merge dotted `overrides` (e.g. {"selection.k": 64}) and validate a YAML config.

    Raises ConfigError naming the file, each invalid key and value, and what is allowed.
    """
    path = Path(path)
    raw = _read_tree(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return TailcalConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path), set(overrides or {}))) from None


def load_serving(path: str | Path) -> ServingConfig:
    """The `serving` section of a YAML config, alone: the inference service needs no gateway,
    budget or pool, so a file holding only `serving:` (or a whole release config) will do.

    Raises ConfigError naming the file, each invalid key and value, and what is allowed.
    """
    path = Path(path)
    tree = _read_tree(path)
    unknown = sorted(str(key) for key in tree if key not in TailcalConfig.model_fields)
    if unknown:  # a misspelt `servng:` would otherwise serve the defaults in silence
        sections = ", ".join(sorted(TailcalConfig.model_fields))
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}. Sections: {sections}.")
    section = tree.get("serving")
    try:
        return ServingConfig.model_validate({} if section is None else section)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path), prefix=("serving",))) from None


def _read_tree(path: Path) -> dict[str, Any]:
    """A YAML config file's mapping of sections; ConfigError naming the file and the fix otherwise."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (relative paths start from the working directory, {Path.cwd()}): "
            "pass the path of a YAML config, e.g. configs/demo.yaml from the tailcal project directory"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory: pass a YAML file such as configs/demo.yaml") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path} ({exc.strerror}): check the path and its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file: pass a YAML config such as configs/demo.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, pool, gateway, …), got {type(raw).__name__}")
    return raw


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}={value!r}: {part} is not a section")
    node[leaf] = value


def _describe(
    exc: ValidationError, source: str, overridden: set[str] | None = None, prefix: tuple[str, ...] = ()
) -> str:
    """One line per error; `prefix` is the section a section's own model was validated for."""
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = [*prefix, *(str(p) for p in err["loc"])]
        key = ".".join(loc) or "<root>"
        if overridden and key in overridden:
            key += " (given as a run parameter, not in the file)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc[:-1]))
            hint = ""
            if loc[-1].lower() in _SECRET_LIKE_KEYS:
                hint = " Secrets come from the environment, never from config files" + (
                    ": the gateway's key from TAILCAL_GATEWAY_KEY (or the variable gateway.key_env names)."
                    if loc[0] == "gateway"
                    else "."
                )
            lines.append(f"  {key}: unknown key. Allowed here: {allowed}.{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required but missing.")
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):
            # a check across a section's settings: its message names them; the section's dump would bury it
            lines.append(f"  {key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key} = {_shown(err.get('input'))}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    """An input value for an error message, with any URL password masked (it must not reach logs)."""
    if isinstance(value, str) and "://" in value:
        return repr(mask_url(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_shown(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = TailcalConfig
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return sorted(model.model_fields)
