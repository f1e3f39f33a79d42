#!/usr/bin/env python3
"""Holds N idle wss:// connections to a wshub, for scripts/mem-per-conn.sh --tls.

Usage: scripts/wss-hold.py HOST PORT N CAFILE [--path /] [--concurrency 200]

Each connection completes the TLS handshake and the WebSocket upgrade, reads the
server's first frame (the hub protocol's welcome) and then stays idle (pings are
answered). Prints one line `READY established=E failed=F` once every connection
has either been established or failed, then holds them until SIGTERM/SIGINT.
Standard library only (asyncio + ssl), so it needs no build step.
"""

import argparse
import asyncio
import base64
import os
import signal
import ssl
import sys


async def read_frame(reader):
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    payload = await reader.readexactly(length)
    return head[0] & 0x0F, payload


def client_frame(opcode, payload):
    mask = os.urandom(4)
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def hold(host, port, path, context, gate, results, held):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname="localhost"), 20
            )
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head[:40])
            await asyncio.wait_for(read_frame(reader), 20)  # the welcome
        except Exception as e:  # noqa: BLE001 - any failure counts as failed
            results["failed"] += 1
            if results["failed"] <= 3:
                print(f"connection failed: {e!r}", file=sys.stderr)
            return
        results["established"] += 1
    held.append(writer)
    try:
        while True:  # idle; answer pings so the server keeps us
            opcode, payload = await read_frame(reader)
            if opcode == 0x9:
                writer.write(client_frame(0xA, payload))
            elif opcode == 0x8:
                return
    except Exception:  # noqa: BLE001
        return


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("cafile")
    parser.add_argument("--path", default="/")
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.cafile)
    gate = asyncio.Semaphore(args.concurrency)
    results = {"established": 0, "failed": 0}
    held = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(hold(args.host, args.port, args.path, context, gate, results, held))
        for _ in range(args.n)
    ]
    while results["established"] + results["failed"] < args.n and not stop.is_set():
        await asyncio.sleep(0.1)
    print(f"READY established={results['established']} failed={results['failed']}", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    for writer in held:
        writer.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
