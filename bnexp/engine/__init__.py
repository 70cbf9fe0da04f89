"""Layer 6, engine: training state, the loop, evaluation, recalibration, ranks of a data-parallel run, checkpoints, and the listener protocol the loop calls."""
