"""Secrets hidden from every text argbench writes or prints: the password of a URL and secret query parameters
(an Optuna or MLflow storage URL in a tag, a param, an error line)."""

from __future__ import annotations

import re

# scheme://user:PASSWORD@ -- the password runs to the last "@" of the token, so one containing "@" or "/" is
# hidden whole (a rare "host:port/path@x" is over-redacted rather than a password leaked).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"<>]*:)[^\s'\"<>]*@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&#\s'\"<>]*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (``scheme://user:pw@host``) and every secret query
    parameter (``?password=``, ``token=``...) replaced by ``***``; anything else unchanged."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", str(text))
    return _QUERY_SECRET.sub(r"\g<head>***", text)

