"""Layer 2, config: the typed schema (the one home of every default), the tables of swappable parts, composing and validating a run config. No torch."""
