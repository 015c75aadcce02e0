# Kept by the template: `copier update` changes this file. Your code goes outside core/.
"""What both workers share at the edge: how a refused request is answered and logged, and how
slow clients are counted without a log line each."""

from __future__ import annotations

import logging
import time

from .logs import AccessLog
from .problems import excerpt, raw_response

log = logging.getLogger(__name__)


def request_line(head: bytes) -> tuple[str, str]:
    """The method and target of a request head, as far as they arrived, for the access line."""
    method, _, rest = head.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"\r")[0]
    return excerpt(method.decode("latin-1"), 16) or "-", excerpt(target.decode("latin-1")) or "-"


def refusal(
    access_log: AccessLog, client: str, head: bytes, status: int, detail: str, request_id: str
) -> bytes:
    """The response to a request refused before it reached the app; writes its access line."""
    method, target = request_line(head)
    access_log.write(client, method, target, status, time.perf_counter(), request_id)
    return raw_response(status, detail, request_id)


class DroppedClients:
    """Counts connections dropped for not sending a complete request in time.

    A flood of slow clients writes one line every `interval` seconds with their number, not a
    line each: nothing a client does may fill the log.
    """

    def __init__(self, timeout: int, interval: float = 10.0) -> None:
        self.timeout = timeout
        self.interval = interval
        self.count = 0
        self.next_line = 0.0

    def add(self) -> None:
        self.count += 1
        self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        if self.count and now >= self.next_line:
            log.warning(
                "dropped %d connection(s) that sent no complete request within %d s "
                "(HTTP_HEADER_TIMEOUT)",
                self.count,
                self.timeout,
            )
            self.count = 0
            self.next_line = now + self.interval
