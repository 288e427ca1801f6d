"""Credentials in URLs never leave the process.

A model string may carry a secret in its URL: ``openai:http://user:SECRET@host/v1#m`` (userinfo) or
``...?api_key=SECRET`` (a keyed query parameter). :func:`redact_urls` removes both from every URL in a
text; everything fairdistill stores, prints, hashes into a run identity or renders goes through it.
:func:`split_credentials` gives a backend the public URL plus the credentials to send, separately.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: query parameters that carry credentials (compared case-insensitively)
SECRET_PARAMS = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "auth_token",
                           "password", "secret", "sig", "signature", "x-api-key"})

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _public(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(value: Any) -> Any:
    """``value`` with the userinfo and credential query parameters of every URL in it removed (strings; lists and
    dicts recursively; anything else unchanged)."""
    if isinstance(value, str):
        return _URL.sub(lambda m: _public(m.group(0)), value) if "://" in value else value
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_urls(v) for v in value)
    return value


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None, dict[str, str]]:
    """(public URL, (user, password) from its userinfo or None, credential query parameters)."""
    parts = urlsplit(url)
    auth = (parts.username or "", parts.password or "") if "@" in parts.netloc else None
    params = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_PARAMS}
    return _public(url), auth, params


__all__ = ["redact_urls", "split_credentials", "SECRET_PARAMS"]
