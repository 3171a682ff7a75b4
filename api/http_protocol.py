"""uvicorn's h11 protocol with a deadline for the request head.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`) but waits forever
for the head of a request, so a client that connects and sends nothing, or trickles its headers,
holds a socket for good; enough of them exhaust the file descriptors. Here a connection that has
not completed a request head within `header_timeout` seconds of connecting (or of its last
response) is closed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def protocol_with_header_timeout(header_timeout: float) -> type[H11Protocol]:
    """An H11Protocol subclass closing connections that are too slow to send a request head."""

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still reading a head
                if self._head_timer is None:
                    self._arm()
            else:
                self._disarm()

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
            waiting_for_head = self.cycle is None or self.cycle.response_complete
            if self.conn.their_state is h11.IDLE and waiting_for_head:
                self.transport.close()

    return HeaderTimeoutProtocol
