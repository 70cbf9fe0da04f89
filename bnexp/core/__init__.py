"""Layer 1, core: errors, the metric and status vocabulary, number formatting. No torch, no I/O."""
