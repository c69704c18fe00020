"""Inference: flood-fill segmentation of subvolumes (google/ffn Canvas semantics) and of
volumes of any size, blockwise on 1..N workers.

``segment_subvolume(model, image, request)`` segments an in-memory subvolume;
``segment_volume(model, image_spec, out_spec, bbox, request)`` does it file to file;
``segment_blockwise(model, image_spec, out_spec, block_size=...)`` splits a large box into
overlapping blocks and stitches them into one segmentation. The names are imported lazily,
so that ``neuroflood --help`` does not pay for importing torch.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "segment_blockwise": ".blockwise",
    "Canvas": ".canvas",
    "BlockwiseConfig": ".config",
    "InferenceOptions": ".config",
    "InferenceRequest": ".config",
    "MaskConfig": ".config",
    "clean_up": ".consensus",
    "compute_consensus": ".consensus",
    "split_segmentation_by_intersection": ".consensus",
    "BatchedExecutor": ".executor",
    "LocalExecutor": ".executor",
    "make_executor": ".executor",
    "FaceMaxMovementPolicy": ".movement",
    "MovementRestrictor": ".movement",
    "get_scored_move_offsets": ".movement",
    "Origin": ".results",
    "SegmentationResult": ".results",
    "dequantize_probability": ".results",
    "quantize_probability": ".results",
    "SEED_POLICIES": ".seeds",
    "SeedPolicy": ".seeds",
    "SeedPolicyFactory": ".seeds",
    "make_seed_policy": ".seeds",
    "resolve_seed_policy": ".seeds",
    "segment_many": ".segment",
    "segment_subvolume": ".segment",
    "segment_volume": ".segment",
    "load_segmentation": ".storage",
    "read_output": ".storage",
    "write_segmentation": ".storage",
}
__all__ = [*_API]

__getattr__ = lazy_getattr(__name__, _API)
