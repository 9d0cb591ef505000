"""Tests of the socketcand server with python-can's own socketcand client."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import can
import cantools
import pytest

from sim.replay import replay_log
from sim.socketcand import SocketcandServer
from sim.socketcand_format import SendCommandError, format_frame, parse_send_command
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.e2e import compute_crc

REPO = Path(__file__).resolve().parent.parent
DATABASE = cantools.database.load_file(str(REPO / "dbc" / "vehicle.dbc"), strict=True)
REAL_LOG = REPO / "tests" / "data" / "keyofftokeyonandlocks.log"
# Frames in REAL_LOG: all of them, and those of Ford BodyInfo_3_FD1 (0x3B3).
REAL_LOG_FRAMES = 12874
REAL_LOG_BODY_INFO_FRAMES = 24


async def open_bus(port: int, channel: str = "vcan0") -> can.BusABC:
    return await asyncio.to_thread(
        can.Bus, interface="socketcand", host="127.0.0.1", port=port, channel=channel
    )


async def shutdown(*buses: can.BusABC) -> None:
    for bus in buses:
        await asyncio.to_thread(bus.shutdown)


def receive_until(
    bus: can.BusABC, done: Callable[[list[can.Message]], bool], timeout: float = 10.0
) -> list[can.Message]:
    """Collect frames until ``done(frames)`` is true or ``timeout`` seconds pass."""
    frames: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while not done(frames) and time.monotonic() < deadline:
        frame = bus.recv(0.1)
        if frame is not None:
            frames.append(frame)
    return frames


def receive_all(bus: can.BusABC, quiet: float) -> list[can.Message]:
    """Collect frames until none arrives for ``quiet`` seconds."""
    frames = []
    while (frame := bus.recv(quiet)) is not None:
        frames.append(frame)
    return frames


async def wait_for_clients(server: SocketcandServer, count: int) -> None:
    async with asyncio.timeout(10):
        while server.client_count < count:
            await asyncio.sleep(0.01)


def crc_matches(frame: can.Message) -> bool:
    message = DATABASE.get_message_by_frame_id(frame.arbitration_id)
    data_id = message.dbc.attributes["E2EDataID"].value
    return frame.data[0] == compute_crc(data_id, bytes(frame.data), 0)


@pytest.mark.asyncio
async def test_handshake_replies_exact():
    async with SocketcandServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            hello = await asyncio.wait_for(reader.readexactly(6), 5)
            writer.write(b"< open vcan0 >")
            open_reply = await asyncio.wait_for(reader.readexactly(6), 5)
            writer.write(b"< rawmode >")
            rawmode_reply = await asyncio.wait_for(reader.readexactly(6), 5)
            await wait_for_clients(server, 1)
            writer.write(b"< echo >")
            echo_reply = await asyncio.wait_for(reader.readexactly(8), 5)
        finally:
            writer.close()
            await writer.wait_closed()

    assert hello == b"< hi >"
    assert open_reply == b"< ok >"
    assert rawmode_reply == b"< ok >"
    assert echo_reply == b"< echo >"


@pytest.mark.asyncio
async def test_client_receives_vehicle_frames():
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", speed_kmh=27.5, gear="D")
    async with SocketcandServer() as server:
        transmitter = PeriodicTransmitter(vehicle, server.broadcast)
        transmitter.start()
        bus = await open_bus(server.port)
        try:
            frames = await asyncio.to_thread(
                receive_until,
                bus,
                lambda got: len({f.arbitration_id for f in got}) == 5,
            )
        finally:
            await shutdown(bus)
            await transmitter.stop()

    decoded = {
        f.arbitration_id: DATABASE.decode_message(f.arbitration_id, f.data)
        for f in frames
    }
    assert set(decoded) == {0x110, 0x120, 0x130, 0x140, 0x150}
    assert decoded[0x110]["PowerMode"] == "RUN"
    assert decoded[0x120]["VehicleSpeed"] == 27.5
    assert decoded[0x130]["SelectedGear"] == "D"
    for frame in frames:
        assert crc_matches(frame), frame
        assert frame.is_extended_id is False
        assert frame.dlc == 4
        assert frame.channel == "vcan0"


@pytest.mark.asyncio
async def test_frame_fields_survive_transport():
    sent = [
        can.Message(
            timestamp=1700000000.123456,
            arbitration_id=0x110,
            is_extended_id=False,
            data=bytes.fromhex("0A1B0200"),
        ),
        can.Message(
            timestamp=1700000000.5,
            arbitration_id=0x18DAF110,
            is_extended_id=True,
            data=bytes(range(8)),
        ),
        can.Message(
            timestamp=1700000001.0, arbitration_id=0x7FF, is_extended_id=False, data=b""
        ),
        can.Message(
            timestamp=1700000002.0,
            arbitration_id=0x001,
            is_extended_id=False,
            data=b"\xff",
        ),
    ]
    async with SocketcandServer() as server:
        bus = await open_bus(server.port)
        try:
            await wait_for_clients(server, 1)
            for msg in sent:
                server.broadcast(msg)
            received = await asyncio.to_thread(
                receive_until, bus, lambda got: len(got) == len(sent)
            )
        finally:
            await shutdown(bus)

    assert len(received) == len(sent)
    for expected, actual in zip(sent, received, strict=True):
        assert actual.arbitration_id == expected.arbitration_id
        assert actual.is_extended_id == expected.is_extended_id
        assert actual.data == expected.data
        assert actual.timestamp == pytest.approx(expected.timestamp, abs=1e-6)


@pytest.mark.asyncio
async def test_error_frames_sent_remote_frames_dropped():
    async with SocketcandServer() as server:
        bus = await open_bus(server.port)
        try:
            await wait_for_clients(server, 1)
            server.broadcast(
                can.Message(
                    arbitration_id=0x20000080, is_error_frame=True, data=b"\x00"
                )
            )
            server.broadcast(
                can.Message(arbitration_id=0x123, is_remote_frame=True, dlc=2)
            )
            server.broadcast(can.Message(arbitration_id=0x124, data=b"\x01"))
            received = await asyncio.to_thread(receive_all, bus, 0.5)
        finally:
            await shutdown(bus)

    assert [frame.arbitration_id for frame in received] == [0x80, 0x124]
    assert received[0].is_error_frame is True
    assert received[1].is_error_frame is False


@pytest.mark.asyncio
async def test_client_send_reaches_other_client():
    forwarded: list[can.Message] = []
    async with SocketcandServer(on_frame=forwarded.append) as server:
        listener = await open_bus(server.port)
        sender = await open_bus(server.port)
        try:
            await wait_for_clients(server, 2)
            await asyncio.to_thread(
                sender.send,
                can.Message(
                    arbitration_id=0x321, is_extended_id=False, data=[1, 2, 0xAB]
                ),
            )
            await asyncio.to_thread(
                sender.send,
                can.Message(arbitration_id=0x1ABCDE01, is_extended_id=True, data=[]),
            )
            listener_frames = await asyncio.to_thread(
                receive_until, listener, lambda got: len(got) == 2
            )
            echoed = await asyncio.to_thread(receive_all, sender, 0.3)
        finally:
            await shutdown(listener, sender)

    assert [
        (f.arbitration_id, f.is_extended_id, bytes(f.data)) for f in listener_frames
    ] == [
        (0x321, False, b"\x01\x02\xab"),
        (0x1ABCDE01, True, b""),
    ]
    assert [(f.arbitration_id, bytes(f.data)) for f in forwarded] == [
        (0x321, b"\x01\x02\xab"),
        (0x1ABCDE01, b""),
    ]
    assert forwarded[0].channel == "vcan0"
    assert echoed == []


@pytest.mark.asyncio
async def test_two_clients_both_receive():
    async with SocketcandServer() as server:
        first = await open_bus(server.port)
        second = await open_bus(server.port)
        try:
            await wait_for_clients(server, 2)
            for index in range(10):
                server.broadcast(
                    can.Message(arbitration_id=0x200 + index, data=[index])
                )
            first_frames, second_frames = await asyncio.gather(
                asyncio.to_thread(receive_until, first, lambda got: len(got) == 10),
                asyncio.to_thread(receive_until, second, lambda got: len(got) == 10),
            )
        finally:
            await shutdown(first, second)

    expected = [0x200 + index for index in range(10)]
    assert [frame.arbitration_id for frame in first_frames] == expected
    assert [frame.arbitration_id for frame in second_frames] == expected


@pytest.mark.asyncio
async def test_stop_ends_frames_and_connections():
    vehicle = ReferenceVehicle()
    server = SocketcandServer()
    await server.start()
    port = server.port
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    bus = await open_bus(port)
    try:
        before = await asyncio.to_thread(receive_until, bus, lambda got: len(got) >= 5)
        await server.stop()
        await asyncio.to_thread(receive_all, bus, 0.3)
        after = await asyncio.to_thread(receive_all, bus, 0.5)
    finally:
        await shutdown(bus)
        await transmitter.stop()
        await server.stop()

    assert len(before) >= 5
    assert after == []
    assert server.connection_count == 0
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


@pytest.mark.asyncio
async def test_wrong_channel_closes_connection():
    async with SocketcandServer(channel="vcan0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            hello = await asyncio.wait_for(reader.readexactly(6), 5)
            writer.write(b"< open can1 >")
            reply = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(5):
            while server.connection_count:
                await asyncio.sleep(0.01)

    assert hello == b"< hi >"
    assert reply == b""
    assert server.client_count == 0


@pytest.mark.asyncio
async def test_invalid_commands_ignored():
    forwarded: list[can.Message] = []
    async with SocketcandServer(on_frame=forwarded.append) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            await reader.readexactly(6)
            writer.write(b"< send 123 1 1 >")  # before open: ignored
            writer.write(b"< open vcan0 >")
            await reader.readexactly(6)
            writer.write(b"< bcmmode >< send 12 1 a >< send 123 2 1 >< send 800 0 >")
            writer.write(
                b"< send 123 1 100 >< send 123 9 0 0 0 0 0 0 0 0 0 >< send xyz 0 >"
            )
            writer.write(b"< send 0AB 2 de ad >")
            async with asyncio.timeout(5):
                while not forwarded:
                    await asyncio.sleep(0.01)
            writer.write(b"< echo >")
            echo_reply = await asyncio.wait_for(reader.readexactly(8), 5)
        finally:
            writer.close()
            await writer.wait_closed()

    assert echo_reply == b"< echo >"
    assert [(f.arbitration_id, bytes(f.data)) for f in forwarded] == [
        (0x0AB, b"\xde\xad")
    ]


@pytest.mark.asyncio
async def test_slow_client_does_not_block_others(caplog):
    frame_count = 20000
    async with SocketcandServer(max_buffer_bytes=16384) as server:
        loop = asyncio.get_running_loop()
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        fast_reader, fast_writer = await asyncio.open_connection(
            "127.0.0.1", server.port
        )
        try:
            await loop.sock_connect(slow, ("127.0.0.1", server.port))
            for request in (b"< open vcan0 >", b"< rawmode >"):
                await loop.sock_recv(slow, 6)
                await loop.sock_sendall(slow, request)
            await fast_reader.readexactly(6)
            fast_writer.write(b"< open vcan0 >")
            await fast_reader.readexactly(6)
            fast_writer.write(b"< rawmode >")
            await fast_reader.readexactly(6)
            await wait_for_clients(server, 2)

            async def count_frames() -> int:
                received = 0
                while received < frame_count:
                    received += (await fast_reader.read(65536)).count(b">")
                return received

            counting = asyncio.create_task(count_frames())
            with caplog.at_level(logging.WARNING, logger="sim.socketcand"):
                for index in range(frame_count):
                    server.broadcast(
                        can.Message(
                            arbitration_id=0x100, data=index.to_bytes(4, "little")
                        )
                    )
                    if index % 200 == 0:
                        await asyncio.sleep(0)
                received = await asyncio.wait_for(counting, 20)
        finally:
            slow.close()
            fast_writer.close()
            await fast_writer.wait_closed()

    assert received == frame_count
    assert server.dropped_frames > 0
    warnings = [r for r in caplog.records if "not reading" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.asyncio
async def test_replay_real_log_through_server():
    async with SocketcandServer() as server:
        bus = await open_bus(server.port)
        try:
            await wait_for_clients(server, 1)
            receiving = asyncio.create_task(asyncio.to_thread(receive_all, bus, 2.0))
            sent = await replay_log(REAL_LOG, server.broadcast, speed=20.0)
            received = await receiving
        finally:
            await shutdown(bus)

    assert sent == REAL_LOG_FRAMES
    assert server.dropped_frames == 0
    assert len(received) == REAL_LOG_FRAMES
    body_info = [frame for frame in received if frame.arbitration_id == 0x3B3]
    assert len(body_info) == REAL_LOG_BODY_INFO_FRAMES
    timestamps = [frame.timestamp for frame in received]
    assert timestamps == sorted(timestamps)


def test_format_frame_standard_and_extended():
    standard = can.Message(
        arbitration_id=0x110, is_extended_id=False, data=bytes.fromhex("0a1b0200")
    )
    extended = can.Message(arbitration_id=0x18DAF110, is_extended_id=True, data=b"\x01")
    empty = can.Message(arbitration_id=0x7, is_extended_id=False, data=b"")

    assert (
        format_frame(standard, 1700000000.123456)
        == b"< frame 110 1700000000.123456 0A1B0200 >"
    )
    assert format_frame(extended, 1.5) == b"< frame 18DAF110 1.500000 01 >"
    assert format_frame(empty, 2.0) == b"< frame 007 2.000000  >"


def test_parse_send_command_python_can_format():
    msg = parse_send_command(["1ABCDE01", "3", "a", "1b", "ff"], 5.0, "vcan0")

    assert msg.arbitration_id == 0x1ABCDE01
    assert msg.is_extended_id is True
    assert msg.dlc == 3
    assert bytes(msg.data) == b"\x0a\x1b\xff"
    assert msg.timestamp == 5.0
    assert msg.channel == "vcan0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (["123"], "expected 'send ID DLC"),
        (["12", "0"], "invalid id '12'"),
        (["800", "0"], "invalid id '800'"),
        (["123", "9"] + ["0"] * 9, "invalid DLC '9'"),
        (["123", "2", "1"], "DLC 2 does not match 1 data bytes"),
        (["123", "1", "100"], "invalid data byte '100'"),
        (["123", "1", "zz"], "invalid data byte 'zz'"),
    ],
)
def test_parse_send_command_rejects(fields, message):
    with pytest.raises(SendCommandError, match=message):
        parse_send_command(fields, 0.0, "vcan0")
