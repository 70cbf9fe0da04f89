"""Layer 8, launch: the trainer entry point, the multi-process launcher and its workers, sweeps."""
