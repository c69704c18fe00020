"""Inference configuration: the Canvas options and the request that runs one subvolume.

Thresholds are probabilities, as google/ffn's ``InferenceOptions`` names them
(ffn-algorithms.md §3.1); the Canvas converts them to logits once. Axis order is z, y, x.

A TOML file for ``neuroflood segment --config`` looks like::

    seed_policy = "PolicyPeaks"
    batch_size = 1           # blockwise: blocks per worker run at once, their FOVs batched
    precision = "float32"    # or "bfloat16" (CPUs with bf16 instructions, GPUs)

    [options]
    init_activation = 0.95
    pad_value = 0.05
    move_threshold = 0.9
    segment_threshold = 0.6
    min_segment_size = 1000
    min_boundary_dist = [1, 1, 1]

    [blockwise]              # large volumes (neuroflood segment --block-size ...)
    block_size = [128, 128, 128]
    handover_rounds = 2
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import Config, parse_ints
from ..errors import ConfigError
from ..precision import short_name
from ..probability import logit
from .expression import check_expression


def _triple(v: Any) -> Any:
    if isinstance(v, int):
        return (v, v, v)
    if isinstance(v, str):
        return parse_ints(v, 3)
    return v


class InferenceOptions(Config):
    """How the Canvas floods one object and accepts it (google/ffn ``InferenceOptions``).

    Defaults are the FIB-25 sample configuration of the reference
    (``configs/inference_training_sample2.pbtxt``).
    """

    init_activation: float = Field(0.95, gt=0, lt=1, description="probability placed at the seed voxel")
    pad_value: float = Field(0.05, gt=0, lt=1, description="probability fed for voxels never predicted (NaN in the canvas)")
    move_threshold: float = Field(0.9, gt=0, lt=1, description="minimum probability at a candidate FOV centre; also the seed-strength test")
    segment_threshold: float = Field(0.6, gt=0, lt=1, description="probability at which the object mask becomes a segment")
    min_segment_size: int = Field(1000, ge=0, description="minimum number of voxels a new segment must claim")
    min_boundary_dist: tuple[int, int, int] = Field(
        (1, 1, 1), description="a seed needs this many voxels (box, z,y,x) between it and any segment"
    )
    disco_seed_threshold: float = Field(
        0.0,
        description=(
            "disconnected-seed freezing: once a voxel is predicted background (p < 0.5) it cannot rise "
            "while the fraction of the FOV at >= move_threshold exceeds this value; "
            "the reference default 0 keeps it on, a negative value turns it off"
        ),
    )
    consistency_threshold: float = Field(
        0.0,
        ge=0,
        description=(
            "2017 self-consistency: re-run the network at the same position (up to 32 times) until "
            "the mean |change of probability| falls below this; 0 turns it off (as the current reference)"
        ),
    )

    @field_validator("min_boundary_dist", mode="before")
    @classmethod
    def _mbd(cls, v: Any) -> Any:
        return _triple(v)

    @field_validator("min_boundary_dist")
    @classmethod
    def _mbd_nonneg(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(d < 0 for d in v):
            raise ValueError(f"min_boundary_dist {v} must be >= 0 on every axis")
        return v

    def logits(self) -> dict[str, float]:
        """The four probability thresholds as logits, keyed by option name."""
        return {k: logit(getattr(self, k)) for k in ("init_activation", "pad_value", "move_threshold", "segment_threshold")}


class MaskConfig(Config):
    """Voxels to exclude, from one source (google/ffn ``MaskConfig``). True means excluded.

    The source is a volume spec read over the same box as the image, the image itself, or a
    numpy expression over the global coordinates ``z``, ``y``, ``x`` (arrays that broadcast
    to the box; ``np`` is numpy). A voxel is masked when its value lies in
    ``[min_value, max_value]`` or, if given, in ``values``; an expression must give booleans.
    """

    volume: str | None = Field(None, description="volume spec of the mask source (same coordinates as the image)")
    image: bool = Field(False, description="use the raw image as the mask source")
    expression: str | None = Field(None, description="numpy expression over global z, y, x giving a boolean mask")
    min_value: float | None = Field(None, description="masked if value >= min_value (and <= max_value)")
    max_value: float | None = Field(None, description="masked if value <= max_value (and >= min_value)")
    values: list[int] | None = Field(None, description="masked if value is one of these")
    invert: bool = Field(False, description="mask the complement instead")

    @field_validator("expression")
    @classmethod
    def _safe_expression(cls, v: str | None) -> str | None:
        # Refuse a bad or hostile expression when the config loads, before any work starts.
        if v is not None:
            try:
                check_expression(v)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _one_source(self) -> MaskConfig:
        n = (self.volume is not None) + bool(self.image) + (self.expression is not None)
        if n != 1:
            raise ValueError("a mask needs exactly one source: volume = 'SPEC', image = true or expression = '...'")
        ranged = self.min_value is not None or self.max_value is not None
        if self.expression is None and not ranged and self.values is None:
            raise ValueError("a volume or image mask needs min_value/max_value or values to select voxels")
        if ranged and self.values is not None:
            raise ValueError("give either min_value/max_value or values, not both")
        return self


class InferenceRequest(Config):
    """Everything that decides how one subvolume is segmented (google/ffn ``InferenceRequest``).

    What is segmented (model, image, box) and where the result goes are given separately;
    this is the part that lives in ``--config``.
    """

    options: InferenceOptions = Field(default_factory=InferenceOptions, description="Canvas options (probabilities)")
    seed_policy: str = Field(
        "PolicyPeaks",
        description="seed policy: PolicyPeaks, PolicyPeaks2d, PolicyMax, PolicyMaxPeaks, PolicyFillEmptySpace, "
        "PolicyGrid3d, PolicyGrid2d, PolicyInvertOrigins, PolicyDenseSeeds, ReverseCoords, SequentialPolicies",
    )
    seed_policy_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the seed policy")
    movement_policy: str = Field("FaceMaxMovementPolicy", description="movement policy (FaceMaxMovementPolicy)")
    movement_policy_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the movement policy (deltas, score_threshold as a probability)"
    )
    image_mean: float | None = Field(None, description="image normalization mean; default: the model's")
    image_stddev: float | None = Field(None, gt=0, description="image normalization stddev; default: the model's")
    voxel_size: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="voxel size z,y,x (distance transforms of seed policies)")
    masks: list[MaskConfig] = Field(default_factory=list, description="voxels the FOV may not move to (OR-ed)")
    seed_masks: list[MaskConfig] = Field(default_factory=list, description="voxels that may not be seeds (OR-ed)")
    batch_size: int = Field(
        1,
        ge=1,
        description="FOVs per network call: blockwise, each worker runs this many blocks at once and batches their "
        "FOV requests (same segmentation on CPU, faster for small networks and GPUs); 1 runs one FOV at a time",
    )
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="network arithmetic: fp32 (float32, matches the reference), or bf16 (bfloat16) / fp16 (float16) autocast "
        "of the network, the canvas staying float32; bf16 on CPU needs bf16 instructions (AVX-512 BF16, AMX), fp16 CUDA",
    )
    tf32: bool = Field(False, description="allow TF32 tensor cores for CUDA convolutions (faster, less exact)")
    keep_probability_maps: bool = Field(True, description="store quantized object probabilities of accepted segments")
    checkpoint_interval: float = Field(
        1800.0, ge=0, description="seconds between inference checkpoints when a checkpoint path is given; 0 disables"
    )

    @field_validator("voxel_size", mode="before")
    @classmethod
    def _voxel(cls, v: Any) -> Any:
        if isinstance(v, (int, float)):
            return (v, v, v)
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, (list, tuple)) and len(v) != 3:
            raise ValueError(f"voxel_size {v} needs 3 values z,y,x, e.g. 40,8,8")
        return v

    @field_validator("voxel_size")
    @classmethod
    def _voxel_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(s > 0 for s in v):
            raise ValueError(f"voxel_size {v} must be positive on every axis (z,y,x)")
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        # float32/bfloat16 (the training config's names) are the same as fp32/bf16
        try:
            return short_name(v) if isinstance(v, str) else v
        except ConfigError:
            raise ValueError(f"{v!r} is not one of float32 (fp32), bfloat16 (bf16), float16 (fp16)") from None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device {v!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v


class BlockwiseConfig(Config):
    """How a large volume is split into overlapping blocks and their objects joined.

    The ``[blockwise]`` table of a ``neuroflood segment --config`` file; the command-line
    options (``--block-size``, ``--overlap``, ...) override it. A block size makes the run
    blockwise. The overlap rule and hand-over rounds are described in docs/design-notes.md.
    """

    block_size: tuple[int, int, int] | None = Field(None, description="block size z,y,x; default: the whole box is one block")
    overlap: tuple[int, int, int] | None = Field(
        None, description="overlap of neighbouring blocks z,y,x; default: fov//2 + delta, e.g. 24 for FIB-25"
    )
    min_overlap_voxels: int = Field(50, ge=1, description="join objects of neighbouring blocks that share at least this many voxels ...")
    min_overlap_fraction: float = Field(
        0.5, gt=0, le=1, description="... and at least this fraction of the smaller one's voxels in the overlap"
    )
    handover_rounds: int = Field(
        2, ge=0, description="rounds in which each block floods the objects its neighbours carry into its core (0: none)"
    )
    one_sided_joins: bool = Field(
        False,
        description="join objects on one block's word (default: the other block must see them touch in its margin, "
        "so that one leaky fill cannot merge two neurons)",
    )

    @field_validator("block_size", "overlap", mode="before")
    @classmethod
    def _zyx(cls, v: Any) -> Any:
        return _triple(v)

    @field_validator("block_size")
    @classmethod
    def _positive(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"block_size {v} must be positive on every axis (z,y,x), e.g. 128,128,128")
        return v

    @field_validator("overlap")
    @classmethod
    def _nonnegative(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 0:
            raise ValueError(f"overlap {v} must be >= 0 on every axis (z,y,x)")
        return v
