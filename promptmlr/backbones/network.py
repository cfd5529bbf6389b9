"""Fail fast when a weight host cannot be reached.

Hub clients retry for about a minute before giving up; on a machine without internet the user
should learn at once that the download cannot work and how to pass a local file instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from promptmlr.backbones.base import BackboneLoadError

PROBE_TIMEOUT_S = 5.0


def hub_endpoint() -> str:
    """The Hugging Face Hub address the hub client will use."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host and port can be opened within ``timeout``."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_reachable(url: str, what_failed: str, how_to_fix: str) -> None:
    """Raise :class:`BackboneLoadError` unless ``url`` is reachable (or hub access is set offline,
    in which case the library reads its cache and reports for itself)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    if not host_reachable(url):
        raise BackboneLoadError(f"{what_failed}{urlparse(url).hostname or url} is unreachable "
                                f"(no network?). {how_to_fix}")
