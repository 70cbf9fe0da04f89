"""bnexp: batch-normalization experiment tracker."""

import os

__version__ = "0.2.0"

# MKL picks code paths by memory alignment unless told to be reproducible; without this a run
# resumed from its checkpoint (tensors at new addresses) drifts from an uninterrupted one in the
# last float bits. Set before torch loads MKL; an explicit MKL_CBWR in the environment wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
