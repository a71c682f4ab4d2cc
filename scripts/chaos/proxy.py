"""A tiny TCP proxy under the chaos runner's control: it can sever every connection at once.

`make chaos` puts it between the stack and Redis for the connection-cut scenario. `cut()`
resets every open connection (both sides see the socket die mid-command, as with a network
drop or an Upstash proxy restart); `refuse(seconds)` also refuses new connections for a while.
It runs an asyncio loop in a daemon thread, so the caller stays synchronous.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time


class Proxy:
    """Forward 127.0.0.1:<port> to (host, port) until `stop()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cuts = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._refuse_until = 0.0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the chaos proxy did not start")
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=1024)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            _reset(writer)

    def cut(self, refuse_seconds: float = 0.0) -> int:
        """Reset every open connection; refuse new ones for `refuse_seconds`. Returns how many
        connections (client and server sides) were cut."""

        async def cut_all() -> int:
            self._refuse_until = time.monotonic() + refuse_seconds
            writers = list(self._writers)
            for writer in writers:
                _reset(writer)
            return len(writers)

        count = asyncio.run_coroutine_threadsafe(cut_all(), self._loop).result(10)
        self.cuts += 1
        return count

    def stop(self) -> None:
        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                _reset(writer)
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN: the peer sees a connection reset, as on a network cut."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()
