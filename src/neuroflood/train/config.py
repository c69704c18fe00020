"""Training configuration: every option of the google/ffn trainer, with its default.

Defaults follow google/ffn ``train.py`` and ``optimizer.py`` (ffn-algorithms.md §2.1, §2.7):
batch 4, plain SGD at lr 1e-3, element-wise gradient clip ±0.7, ``fixed`` FOV policy with
move threshold 0.9 and seed pad 0.05, y/x transposition and z/y/x flips, checkpoints every
300 s keeping the last 5 plus one per 15 minutes, summaries every 120 s. Axis order is
z, y, x; thresholds are probabilities.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import Config, ModelConfig


class TrainConfig(Config):
    """Everything a training run needs; saved as ``RUN_DIR/config.json``."""

    # --- data -------------------------------------------------------------------------------
    images: dict[str, str] = Field(
        default_factory=dict,
        description="image volume spec per volume name (names as in the coordinate file); uint8 EM",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="label volume spec per volume name (integer ids, 0 = background)")
    loss_weights: dict[str, str] = Field(
        default_factory=dict,
        description="optional per-voxel loss-weight volume per volume name (e.g. a 0/1 mask); default all 1",
    )
    coords: str = Field("", description="training coordinate file (neuroflood coordinate format)")
    eval_coords: str | None = Field(None, description="held-out coordinate file for periodic evaluation")
    image_offset_scale: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="per-volume (mean, stddev) overriding the model's image_mean/image_stddev",
    )
    run_dir: str = Field("", description="directory for config.json, metrics.jsonl, checkpoints, TensorBoard")

    # --- model and initialization ----------------------------------------------------------
    model: ModelConfig = Field(default_factory=ModelConfig, description="network geometry and image normalization")
    init_from: str | None = Field(None, description="start from these weights (native checkpoint dir or google/ffn TF prefix)")
    seed: int = Field(0, ge=0, le=2**64 - 1, description="seed of every random stream (weights, coordinates, moves, augmentation)")

    # --- FFN example generation (ffn-algorithms.md §2.2-2.4) --------------------------------
    batch_size: int = Field(4, ge=1, description="independent trajectories per step (per worker)")
    fov_policy: Literal["fixed", "max_pred_moves", "fixed_window", "no_step"] = Field(
        "fixed", description="how the FOV moves inside a training patch"
    )
    fov_moves: int = Field(1, ge=1, description="FOV moves by deltas along each axis that the patch allows")
    shuffle_moves: bool = Field(True, description="shuffle the fixed policy's offsets (once per run)")
    threshold: float = Field(0.9, gt=0, lt=1, description="probability needed at a move target to execute the move")
    seed_pad: float = Field(0.05, gt=0, lt=1, description="probability of the unknown seed area")
    fixed_window_radius: int = Field(4, ge=0, description="window radius of the fixed_window policy")
    legacy_max_pred: bool = Field(
        False, description="max_pred_moves executes every valid move, also outside the object (2017-2023 behaviour)"
    )
    shuffle_coordinates: bool = Field(True, description="visit the worker's coordinates in a new random order each epoch")
    permutable_axes: tuple[int, ...] = Field((1, 2), description="axes (0=z,1=y,2=x) randomly permuted; (1,2) = y/x transpose")
    reflectable_axes: tuple[int, ...] = Field((0, 1, 2), description="axes (0=z,1=y,2=x) randomly flipped")
    contrast_factor_range: tuple[float, float] | None = Field(
        None, description="random contrast factor range, e.g. (0.8, 1.2); off by default as in the TF trainer"
    )
    brightness_factor_range: tuple[float, float] | None = Field(
        None, description="random brightness shift range in grey levels, e.g. (-10, 10); off by default"
    )
    apply_adjustment_to: Literal["all", "foreground", "background"] = Field(
        "all", description="where contrast/brightness changes apply, relative to the target object"
    )

    # --- optimization (ffn-algorithms.md §1.3, §2.7) ----------------------------------------
    optimizer: Literal["sgd", "momentum", "adam", "adagrad", "rmsprop"] = Field("sgd", description="optimizer")
    learning_rate: float = Field(1e-3, gt=0, description="base learning rate")
    momentum: float = Field(0.9, ge=0, description="momentum of the 'momentum' and 'rmsprop' optimizers (as google/ffn)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    epsilon: float = Field(1e-8, gt=0, description="epsilon of Adam and RMSProp")
    rmsprop_decay: float = Field(0.9, ge=0, lt=1, description="RMSProp decay")
    adagrad_initial_accumulator: float = Field(0.1, ge=0, description="Adagrad initial accumulator (TF default 0.1)")
    lr_decay_factor: float | None = Field(None, gt=0, description="staircase decay: lr * factor ** (step // decay_steps)")
    decay_steps: int | None = Field(None, ge=1, description="steps per decay stage (needs lr_decay_factor)")
    grad_clip: float | None = Field(0.7, gt=0, description="element-wise gradient clip magnitude; null disables")
    max_steps: int = Field(10000, ge=0, description="stop after this many optimizer steps")
    max_train_seconds: float | None = Field(
        None, gt=0, description="also stop once this much training time (time_s in metrics.jsonl) has passed"
    )
    emulate_workers: int = Field(
        1, ge=1, description="average the gradients of N example generators per step (emulated data-parallel workers)"
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="learning-rate target for N workers (ranks × emulated workers): none = base, linear = base·N, sqrt = base·√N",
    )
    warmup_steps: int = Field(0, ge=0, description="ramp the learning rate linearly from 0 (at step 0) to its target over this many steps")
    fixed_sample_budget: bool = Field(
        False, description="with N workers run max_steps // N steps, keeping the examples seen those of one worker (as Dong et al. 2019)"
    )

    # --- performance ------------------------------------------------------------------------
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16 = autocast of the network (float32 weights, loss and canvas)"
    )
    channels_last: bool = Field(True, description="channels-last 3-D memory format (faster conv3d with oneDNN/cuDNN)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads, set once at process start (default: torch's)")
    inject_jitter_s: float = Field(
        0.0,
        ge=0,
        description="measurement aid: each rank sleeps an extra Exp(mean) seconds per step (seeded per rank); "
        "for validating the scaling model, never for real training",
    )

    # --- logging, evaluation and checkpoints (ffn-algorithms.md §2.6, §2.8) ------------------
    summary_every_secs: float = Field(120.0, gt=0, description="seconds between train metric summaries")
    summary_every_steps: int | None = Field(None, ge=1, description="also summarize every N steps")
    eval_every_steps: int | None = Field(None, ge=1, description="evaluate on eval_coords every N steps")
    eval_every_secs: float | None = Field(None, gt=0, description="evaluate on eval_coords every N seconds")
    eval_examples: int = Field(64, ge=1, description="held-out examples (trajectories) per evaluation")
    eval_batch_size: int | None = Field(
        None, ge=1, description="held-out trajectories run at once (default: batch_size); larger is faster, same examples"
    )
    checkpoint_every_secs: float | None = Field(300.0, gt=0, description="seconds between checkpoints")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint every N steps")
    keep_last: int = Field(5, ge=1, description="checkpoints kept (newest)")
    keep_every_hours: float | None = Field(0.25, gt=0, description="additionally keep one checkpoint per this many hours")
    tensorboard: bool = Field(True, description="write TensorBoard events to RUN_DIR/tb")
    progress: bool = Field(True, description="show a tqdm progress bar on stderr")

    @field_validator("permutable_axes", "reflectable_axes")
    @classmethod
    def _axes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v) or any(a not in (0, 1, 2) for a in v):
            raise ValueError(f"{v} must be distinct axes from 0 (z), 1 (y), 2 (x)")
        return tuple(v)

    @field_validator("image_offset_scale")
    @classmethod
    def _scales(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (_, scale) in v.items():
            if not scale > 0 or not math.isfinite(scale):
                raise ValueError(f"stddev of volume {name!r} must be > 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if (self.lr_decay_factor is None) != (self.decay_steps is None):
            raise ValueError("lr_decay_factor and decay_steps go together; set both or neither")
        return self

    def patch_moves(self) -> int:
        """``fov_moves()`` of the reference: one more for max_pred_moves to fill the eval area."""
        return self.fov_moves + 1 if self.fov_policy == "max_pred_moves" else self.fov_moves

    def patch_size(self) -> tuple[int, int, int]:
        """Size of image, labels and canvas: fov + 2·deltas·moves (49³ fixed, 65³ max_pred_moves)."""
        m = self.patch_moves()
        return tuple(f + 2 * d * m for f, d in zip(self.model.fov_size, self.model.deltas))  # type: ignore[return-value]

    def eval_size(self) -> tuple[int, int, int]:
        """Region scored by the metrics: fov + 2·deltas·fov_moves (49³ for FIB-25 geometry)."""
        return tuple(f + 2 * d * self.fov_moves for f, d in zip(self.model.fov_size, self.model.deltas))  # type: ignore[return-value]
