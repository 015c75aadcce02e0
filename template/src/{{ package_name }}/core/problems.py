# Kept by the template: `copier update` changes this file. Your code goes outside core/.
"""Error responses: one JSON shape for every error, whoever answers (the app or the worker).

The shape is RFC 9457's problem details, plus the request id that the access line carries:

    {"type": "about:blank", "title": "Not Found", "status": 404,
     "detail": "no route for GET /x", "request_id": "..."}

Nothing from the request is echoed back beyond a short excerpt.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

CONTENT_TYPE = "application/problem+json"
EXCERPT_LENGTH = 64


def excerpt(text: str, length: int = EXCERPT_LENGTH) -> str:
    """At most `length` characters of client input, printable, marked when cut."""
    shown = text[:length].encode("unicode_escape").decode("ascii")
    return shown + "..." if len(text) > length else shown


def problem(status: int, detail: str, request_id: str) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }


def problem_bytes(status: int, detail: str, request_id: str) -> bytes:
    return json.dumps(problem(status, detail, request_id)).encode()


def raw_response(status: int, detail: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for the workers' own refusals."""
    body = problem_bytes(status, detail, request_id)
    head = (
        f"HTTP/1.1 {status} {problem(status, '', '')['title']}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
