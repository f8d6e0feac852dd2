"""What a route answers, as plain data: the HTTP layer only writes it (or drops the socket).

Keeping replies as values lets the service decide everything — including "say nothing and hang
up" — without touching sockets, and keeps the error envelopes in one place, shaped exactly as the
API documents them: {"error": {"code", "message", "type", "param", "fallback_suggestion"}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """One response. `drop=True` means: write nothing, close the connection."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Reply(status=status, body=body, headers=dict(headers or {}))


def error_reply(
    status: int,
    code: str,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    fallback_suggestion: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """The documented error envelope; optional fields appear only when they have a value."""
    error: dict[str, Any] = {"code": code, "message": message, "type": error_type}
    if param is not None:
        error["param"] = param
    if fallback_suggestion is not None:
        error["fallback_suggestion"] = fallback_suggestion
    return json_reply({"error": error}, status, headers)


def invalid_request(message: str, *, param: str | None = None, status: int = 400) -> Reply:
    """400 invalid_request / invalid_request_error: the request itself is wrong."""
    return error_reply(status, "invalid_request", message, "invalid_request_error", param=param)


def not_found(message: str) -> Reply:
    return error_reply(404, "not_found_error", message, "not_found_error")


def xml_error_reply(status: int, code: str, message: str) -> Reply:
    """Object-storage style error, as presigned result links give when refused."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>\n"
    ).encode()
    return Reply(status=status, body=body, content_type="application/xml")
