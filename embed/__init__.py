"""Stage 1 (torch side): backbone registry, weights, TTA, the embedding run and its Zarr
store, and the fine-tuned CNN path. The only package of hespot that imports torch/timm."""
