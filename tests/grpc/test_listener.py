"""The listening socket we bind ourselves: its port, and the connections it can end.

Ending connections relies on the event loop accepting through our socket's ``accept()``;
the second test fails if an event loop stops doing so.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from service.grpc.listener import Listener, bind_listener


async def test_port_zero_binds_a_free_port_and_a_taken_one_fails_cleanly() -> None:
    listener = await bind_listener("127.0.0.1", 0)
    try:
        assert isinstance(listener, Listener) and listener.port > 0
        listener.listen()
        with pytest.raises(OSError):  # and the failed socket is closed, not leaked
            await bind_listener("127.0.0.1", listener.port)
    finally:
        listener.close()


async def test_the_event_loop_accepts_through_it_and_shutdown_ends_connections() -> None:
    listener = await bind_listener("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            async with asyncio.timeout(5):
                while listener.connections == 0:
                    await asyncio.sleep(0.01)
            assert listener.connections == 1, "the loop accepted through Listener.accept()"
            assert listener.end_connections() == 1
            assert await asyncio.wait_for(reader.read(), 5) == b""  # end-of-file
            async with asyncio.timeout(5):
                while listener.connections:  # the server's transport closed itself
                    await asyncio.sleep(0.01)
            assert listener.end_connections() == 0
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert listener.fileno() == -1, "closing the server closed the listener"


def test_it_is_a_plain_stream_socket() -> None:
    with Listener(socket.AF_INET, socket.SOCK_STREAM, 0) as listener:
        assert listener.type == socket.SOCK_STREAM
        assert listener.connections == 0
