"""A TCP relay: `python -m tests.tcp_proxy LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT`.
It prints `ready` once it listens. The network-cut test runs one inside a network namespace."""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _relay(host: str, port: int) -> None:
    async def handle(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            server_reader, server = await asyncio.open_connection(host, port)
        except OSError:
            client.close()
            return
        await asyncio.gather(_pipe(client_reader, server), _pipe(server_reader, client))

    listen_host, listen_port = sys.argv[1], int(sys.argv[2])
    relay = await asyncio.start_server(handle, listen_host, listen_port)
    print("ready", flush=True)
    await relay.serve_forever()


if __name__ == "__main__":
    asyncio.run(_relay(sys.argv[3], int(sys.argv[4])))
