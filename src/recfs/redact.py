"""Keeping secrets and control characters out of the log.

Every secret the daemon holds (config secrets, issued tokens) is registered here;
the log filter replaces any of them with '***' wherever it appears, even inside
an error message a service echoed back, and escapes control characters so that a
hostile file name cannot forge a log line.
"""
from __future__ import annotations

import logging

_secrets: set[str] = set()
_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {0x7f: "\\x7f", 10: "\\n", 13: "\\r", 9: "\\t"}


def register(value: str) -> None:
    if value and len(value) >= 4:
        _secrets.add(value)


def scrub(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class LogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = scrub(message).translate(_CONTROL)
        record.args = ()
        return True
