"""Layer 7, tracking: listeners that watch training (run log, checkpointer, progress, probes, TensorBoard, diagnostics)."""
