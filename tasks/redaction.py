"""Keeping secrets out of text: logs, error messages and MLflow params."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """The URL with any password replaced by ****, safe for logs."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:  # a malformed netloc: show nothing of it
        return f"{parts.scheme}://****"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:****@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
