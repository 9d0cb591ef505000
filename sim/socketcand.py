"""Asyncio TCP server speaking the raw mode of the socketcand protocol.

It implements what python-can's ``socketcand`` interface (python-can 4.6) uses:

- on connect the server sends ``< hi >``;
- ``< open CHANNEL >`` gets the reply ``< ok >``, and a channel other than
  the served one closes the connection;
- ``< rawmode >`` gets the reply ``< ok >``, and after that the client gets
  every frame as ``< frame ID SECONDS.USEC HEXDATA >`` and every error frame
  as ``< error ID SECONDS.USEC >``;
- ``< send ID DLC B0 B1 ... >`` from a client goes to all other clients in raw
  mode and to the ``on_frame`` callback. ``< echo >`` gets the reply ``< echo >``.

The python-can client reads each handshake reply with a single recv() and
compares the whole text, so every reply is written on its own, only after its
request, and error lines go only to clients in raw mode (the client raises on
them during the handshake). Other commands are logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import can

from sim.socketcand_format import (
    SendCommandError,
    format_error_frame,
    format_frame,
    parse_send_command,
)

_LOGGER = logging.getLogger(__name__)

_HELLO = b"< hi >"
_OK = b"< ok >"
_ECHO = b"< echo >"
_READ_SIZE = 4096
# A command longer than this that still has no closing ">" is discarded.
_MAX_COMMAND_CHARS = 1024
# Unsent bytes per client above which its frames are dropped: about 25,000 frames,
# room for a log replayed at high speed to a client that reads a little late.
DEFAULT_MAX_BUFFER_BYTES = 1 << 20
# NOTE: the protocol has no way for the server to learn that the client has read
# "< ok >", so frames start this long (seconds) after the rawmode reply. A client
# that reads later than that can get "< ok >" and frames in one recv() and fail
# its handshake.
DEFAULT_RAWMODE_DELAY = 0.05
# Kernel send buffer of each client connection, in bytes. Linux grows an unset one
# up to the net.ipv4.tcp_wmem maximum (4 MiB by default), about 17 minutes of the
# reference vehicle's 100 frames/s, before max_buffer_bytes could take effect.
_SOCKET_SEND_BUFFER = 64 * 1024
# Seconds stop() waits for connection handlers to end before it cancels them.
_STOP_TIMEOUT = 2.0


@dataclass(eq=False)
class _Client:
    writer: asyncio.StreamWriter
    peer: str
    is_open: bool = False
    is_raw: bool = False
    dropped_frames: int = 0
    ignored_commands: int = 0


class SocketcandServer:
    """socketcand server on ``host`` serving one CAN channel to any number of clients.

    ``port`` 0 picks a free port, read it from ``.port`` after start(). broadcast()
    only queues data and never waits for a client. Frames for a client whose unsent
    data exceeds ``max_buffer_bytes`` are dropped, so a client that stops reading
    holds a bounded amount of memory. The first drop per client is logged.
    ``on_frame`` is called with every frame that a client sends.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        channel: str = "vcan0",
        on_frame: Callable[[can.Message], None] | None = None,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        rawmode_delay: float = DEFAULT_RAWMODE_DELAY,
    ) -> None:
        self.host = host
        self.channel = channel
        self._requested_port = port
        self._on_frame = on_frame
        self._max_buffer_bytes = max_buffer_bytes
        self._rawmode_delay = rawmode_delay
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._clients: set[_Client] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._dropped_before: int = 0

    @property
    def port(self) -> int:
        """TCP port the server listens on. Raises RuntimeError before start()."""
        if self._port is None:
            raise RuntimeError("server is not started")
        return self._port

    @property
    def client_count(self) -> int:
        """Number of clients in raw mode, which are the ones that receive frames."""
        return sum(1 for client in self._clients if client.is_raw)

    @property
    def connection_count(self) -> int:
        """Number of open client connections, in any state."""
        return len(self._clients)

    @property
    def dropped_frames(self) -> int:
        """Frames dropped for clients that did not read, since the server was made."""
        return self._dropped_before + sum(c.dropped_frames for c in self._clients)

    async def start(self) -> None:
        """Start listening. Raises OSError when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("server is already started")
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self._requested_port
        )
        self._port = self._server.sockets[0].getsockname()[1]
        _LOGGER.info(
            "socketcand server listening on %s:%d, channel %s",
            self.host,
            self._port,
            self.channel,
        )

    async def stop(self) -> None:
        """Close the listener and every client connection, and wait for them to end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Closing a connection ends its handler with end of file, and the wait
        # lets each handler log its client's disconnect.
        for client in list(self._clients):
            client.writer.close()
        handlers = set(self._handlers)
        if handlers:
            _, unfinished = await asyncio.wait(handlers, timeout=_STOP_TIMEOUT)
            for handler in unfinished:
                handler.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await server.wait_closed()
        _LOGGER.info("socketcand server on %s:%s stopped", self.host, self._port)

    async def __aenter__(self) -> SocketcandServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def broadcast(self, msg: can.Message) -> None:
        """Send ``msg`` to every client in raw mode.

        An error frame goes out as an error line that carries its error class
        bits only, the form python-can 4.6's client parses. Remote frames are
        not sent, because that client cannot parse them. A message timestamp
        of 0 (unset) is replaced by ``time.time()``.
        """
        if msg.is_remote_frame:
            _LOGGER.debug("not sending remote frame 0x%X", msg.arbitration_id)
            return
        timestamp = msg.timestamp or time.time()
        if msg.is_error_frame:
            line = format_error_frame(msg, timestamp)
        else:
            line = format_frame(msg, timestamp)
        for client in self._clients:
            if client.is_raw:
                self._write_frame(client, line)

    def _write_frame(self, client: _Client, line: bytes) -> None:
        transport = client.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > self._max_buffer_bytes:
            client.dropped_frames += 1
            if client.dropped_frames == 1:
                _LOGGER.warning(
                    "client %s is not reading: more than %d bytes wait to be sent, "
                    "dropping frames for it until it catches up",
                    client.peer,
                    self._max_buffer_bytes,
                )
            return
        client.writer.write(line)

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        client = _Client(writer, f"{peername[0]}:{peername[1]}")
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_SEND_BUFFER
        )
        self._handlers.add(task)
        self._clients.add(client)
        _LOGGER.info("client %s connected", client.peer)
        try:
            writer.write(_HELLO)
            await self._serve_client(client, reader)
        except ConnectionError as err:
            _LOGGER.info("client %s connection lost: %s", client.peer, err)
        except asyncio.CancelledError:
            # Not raised again: asyncio.start_server (Python 3.11) reports a
            # cancelled connection task as an error in its done callback.
            _LOGGER.debug("handler of client %s cancelled", client.peer)
        finally:
            self._clients.discard(client)
            self._dropped_before += client.dropped_frames
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
            finally:
                # Only now, so that stop() also waits for a handler that is
                # still closing its socket: the event loop may end right after.
                self._handlers.discard(task)
            _LOGGER.info(
                "client %s disconnected, %d frames dropped for it",
                client.peer,
                client.dropped_frames,
            )

    async def _serve_client(
        self, client: _Client, reader: asyncio.StreamReader
    ) -> None:
        pending = ""
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                return
            pending += chunk.decode("ascii", errors="replace")
            commands, pending = _split_commands(pending, client.peer)
            for command in commands:
                if not await self._execute(client, command):
                    return

    async def _execute(self, client: _Client, command: str) -> bool:
        """Run one command, the text between "<" and ">". Return False to disconnect."""
        words = command.split()
        verb = words[0] if words else ""
        if verb == "open":
            requested = words[1] if len(words) == 2 else command
            if requested != self.channel:
                _LOGGER.warning(
                    "client %s requested channel %r but this server serves only %r, "
                    "closing the connection",
                    client.peer,
                    requested,
                    self.channel,
                )
                return False
            client.is_open = True
            client.writer.write(_OK)
        elif verb == "rawmode" and client.is_open:
            client.writer.write(_OK)
            await client.writer.drain()
            await asyncio.sleep(self._rawmode_delay)
            client.is_raw = True
            _LOGGER.info("client %s is in raw mode on %s", client.peer, self.channel)
        elif verb == "send" and client.is_open:
            self._receive_frame(client, words[1:])
        elif verb == "echo":
            client.writer.write(_ECHO)
        else:
            client.ignored_commands += 1
            level = logging.WARNING if client.ignored_commands == 1 else logging.DEBUG
            _LOGGER.log(
                level,
                "client %s: ignoring %s command <%s> (%d ignored so far)",
                client.peer,
                "unsupported" if client.is_open else "pre-open",
                command.strip(),
                client.ignored_commands,
            )
        return True

    def _receive_frame(self, sender: _Client, fields: list[str]) -> None:
        try:
            msg = parse_send_command(fields, time.time(), self.channel)
        except SendCommandError as err:
            _LOGGER.warning(
                "client %s sent an invalid send command: %s", sender.peer, err
            )
            return
        line = format_frame(msg, msg.timestamp)
        for client in self._clients:
            if client is not sender and client.is_raw:
                self._write_frame(client, line)
        if self._on_frame is not None:
            try:
                self._on_frame(msg)
            except Exception:
                _LOGGER.exception(
                    "on_frame callback failed for frame 0x%X", msg.arbitration_id
                )


def _split_commands(pending: str, peer: str) -> tuple[list[str], str]:
    """Split ``pending`` into the bodies of complete commands and the unparsed rest."""
    commands = []
    while True:
        start = pending.find("<")
        if start < 0:
            if pending.strip():
                _LOGGER.debug(
                    "client %s: discarding text outside a command: %r", peer, pending
                )
            return commands, ""
        end = pending.find(">", start)
        if end < 0:
            if len(pending) - start > _MAX_COMMAND_CHARS:
                _LOGGER.warning(
                    "client %s: discarding a command with no closing '>' "
                    "after %d characters",
                    peer,
                    _MAX_COMMAND_CHARS,
                )
                return commands, ""
            return commands, pending[start:]
        if pending[:start].strip():
            _LOGGER.debug(
                "client %s: discarding text outside a command: %r",
                peer,
                pending[:start],
            )
        commands.append(pending[start + 1 : end])
        pending = pending[end + 1 :]
