"""uvicorn's HTTP protocol (httptools' C parser where installed, else h11) with a deadline for the
request head.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`) but waits forever
for the head of a request, so a client that connects and sends nothing, or trickles its headers,
holds a socket for good; enough of them exhaust the file descriptors. Here a connection that has
not completed a request head within `header_timeout` seconds of connecting (or of its last
response) is closed.
"""

from __future__ import annotations

import asyncio
import importlib.util


def _base_protocol() -> type:
    # httptools parses in C and frames each streamed chunk with one write; h11 does both in Python,
    # which a stream pays for at every token.
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol
    return H11Protocol


def protocol_with_header_timeout(header_timeout: float) -> type:
    """A uvicorn HTTP protocol class closing connections that are too slow to send a request head."""

    class HeaderTimeoutProtocol(_base_protocol()):
        _head_timer: asyncio.TimerHandle | None = None

        def _waiting_for_head(self) -> bool:
            # A request's cycle exists from its complete head until its response is sent.
            return self.cycle is None or self.cycle.response_complete

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._waiting_for_head():
                self._disarm()
            elif self._head_timer is None and not self.transport.is_closing():
                self._arm()  # the first bytes of a new head on a kept-alive connection

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # the keep-alive timer now guards the idle connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if self._waiting_for_head():
                self.transport.close()

    return HeaderTimeoutProtocol
