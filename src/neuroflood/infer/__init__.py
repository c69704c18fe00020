"""Inference: flood-fill segmentation of subvolumes (google/ffn Canvas semantics).

``segment_subvolume(model, image, request)`` segments an in-memory subvolume;
``segment_volume(model, image_spec, out_spec, bbox, request)`` does it file to file.
"""

from .canvas import Canvas, Origin, dequantize_probability, quantize_probability
from .config import InferenceOptions, InferenceRequest, MaskConfig
from .consensus import clean_up, compute_consensus, split_segmentation_by_intersection
from .executor import BatchedExecutor, LocalExecutor, make_executor
from .movement import FaceMaxMovementPolicy, MovementRestrictor, get_scored_move_offsets
from .seeds import SEED_POLICIES, make_seed_policy
from .segment import SegmentationResult, segment_many, segment_subvolume, segment_volume
from .storage import load_segmentation, read_output, write_output

__all__ = [
    "BatchedExecutor", "Canvas", "FaceMaxMovementPolicy", "InferenceOptions", "InferenceRequest", "LocalExecutor",
    "MaskConfig", "MovementRestrictor", "Origin", "SEED_POLICIES", "SegmentationResult", "clean_up",
    "compute_consensus", "dequantize_probability", "get_scored_move_offsets", "load_segmentation",
    "make_executor", "make_seed_policy", "quantize_probability", "read_output", "segment_many",
    "segment_subvolume", "segment_volume", "split_segmentation_by_intersection", "write_output",
]
