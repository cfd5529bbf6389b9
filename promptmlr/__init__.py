"""promptmlr: multi-label recognition with partial labels on a frozen CLIP."""

__version__ = "0.1.0"
