"""Layer 5, data: datasets held as tensors on the training device."""
