"""bnexp's Hydra config tree, installed as the package ``bnexp.conf``."""
