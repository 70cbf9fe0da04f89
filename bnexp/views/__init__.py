"""Layer 9, views: terminal tables and plots, seed statistics, reports, the TensorBoard dashboard. Torch-free."""
