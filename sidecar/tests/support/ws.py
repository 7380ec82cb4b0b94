"""WebSocket peer for the sidecar tests (PyPI `websockets`).

    ws.py server HOST PORT NAME      echo server: answers each message with "NAME: message"
    ws.py client URL [HEADER]        sends "hello", prints the answer, exits 0
"""
import asyncio
import sys


async def serve(host, port, name):
    from websockets.asyncio.server import serve as ws_serve

    async def echo(conn):
        async for message in conn:
            await conn.send(f"{name}: {message}")

    async with ws_serve(echo, host, int(port)):
        print("ready", flush=True)
        await asyncio.Future()


async def client(url, header=None):
    from websockets.asyncio.client import connect

    headers = {}
    if header:
        key, value = header.split(":", 1)
        headers[key.strip()] = value.strip()
    async with connect(url, additional_headers=headers, open_timeout=5) as conn:
        await conn.send("hello")
        print(await asyncio.wait_for(conn.recv(), 5))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(*sys.argv[2:5]))
    else:
        asyncio.run(client(*sys.argv[2:4]))
