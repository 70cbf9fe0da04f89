"""Layer 4, nn: the from-scratch batch norm, the models and their norm sites, the custom-vs-torch check."""
