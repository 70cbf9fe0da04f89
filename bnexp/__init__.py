"""bnexp: batch-normalization experiment tracker."""
