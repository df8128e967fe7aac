#!/usr/bin/env python3
"""Measures what slow clients hold in a weft server (issue 10, attacks 4 and 5).

  slow-bodies N: N connections each send a `POST /api/room/matchmake` head announcing a
      100-byte body, then only part of it, and wait. Reports, over time, the server's open file
      descriptors, how many of the N sockets are still open, and whether a fresh `/healthz` works.
  fragments N: N canvas WebSockets each send the first fragment (1,000,000 bytes, not final) of
      a text message and then only answer pings. Reports, over time, the server's resident memory
      and how many of the N sockets are still open.

Usage: measure_slow_clients.py WEFT_BINARY {slow-bodies|fragments} N [seconds]
The server runs with memory storage on a free port; extra `weft serve` flags from WEFT_FLAGS.
"""

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary):
    port = free_port()
    flags = shlex.split(os.environ.get("WEFT_FLAGS", ""))
    proc = subprocess.Popen(
        [binary, "serve", "--storage", "memory", "--addr", f"127.0.0.1:{port}", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, port


def server_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def server_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kib = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kib / 1024


async def healthz(port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 3)
        w.close()
        return data.split(b"\r\n", 1)[0].decode()
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        return f"failed: {type(e).__name__}"


async def watch_close(reader, state, answer_pings=None):
    """Reads until EOF; answers pings with pongs when given the writer."""
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if answer_pings is None:
                continue
            buf += data
            while len(buf) >= 2:
                opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
                head = 2
                if length == 126:
                    if len(buf) < 4:
                        break
                    length, head = int.from_bytes(buf[2:4], "big"), 4
                elif length == 127:
                    if len(buf) < 10:
                        break
                    length, head = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < head + length:
                    break
                payload, buf = buf[head : head + length], buf[head + length :]
                if opcode == 0x9:
                    answer_pings.write(client_frame(0xA, payload, fin=True))
    except (ConnectionError, OSError):
        pass
    state["open"] -= 1


def client_frame(opcode, payload, fin):
    """A masked client frame; the mask key is zero, so the payload goes as is."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def slow_bodies(port, n, state, tasks):
    async def one(i):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            state["connect_failed"] += 1
            return
        w.write(
            b"POST /api/room/matchmake HTTP/1.1\r\nHost: weft\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"namespace\": \"ar"
        )
        state["open"] += 1
        tasks.append(asyncio.create_task(watch_close(r, state)))
        state["writers"].append(w)

    await asyncio.gather(*(one(i) for i in range(n)))


async def fragments(port, n, state, tasks):
    payload = b'{"type":"patch","messageId":"m","patches":{"k":{"pad":"' + b" " * 999_900
    frame = client_frame(0x1, payload, fin=False)

    async def one(i):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            state["connect_failed"] += 1
            return
        w.write(
            f"GET /?roomId=frag&clientId=c{i} HTTP/1.1\r\nHost: weft\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await r.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            state["refused"] += 1
            w.close()
            return
        w.write(frame)
        await w.drain()
        state["open"] += 1
        tasks.append(asyncio.create_task(watch_close(r, state, answer_pings=w)))
        state["writers"].append(w)

    sem = asyncio.Semaphore(50)

    async def limited(i):
        async with sem:
            await one(i)

    await asyncio.gather(*(limited(i) for i in range(n)))


async def main():
    binary, attack, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 20
    proc, port = start_server(binary)
    try:
        await asyncio.sleep(0.5)
        base_fds, base_rss = server_fds(proc.pid), server_rss_mib(proc.pid)
        print(f"{attack} x{n} against {binary}")
        print(f"idle server: {base_fds} fds, {base_rss:.0f} MiB resident")
        state = {"open": 0, "connect_failed": 0, "refused": 0, "writers": []}
        tasks = []
        started = time.monotonic()
        await (slow_bodies if attack == "slow-bodies" else fragments)(port, n, state, tasks)
        print(f"sent in {time.monotonic() - started:.1f} s; connect failures {state['connect_failed']}, "
              f"refused upgrades {state['refused']}")
        for at in [1, 5, 12, seconds]:
            await asyncio.sleep(max(0, started + at - time.monotonic()))
            print(
                f"t={at:>4.0f} s: client sockets open {state['open']:>5}, server fds "
                f"{server_fds(proc.pid):>5}, server RSS {server_rss_mib(proc.pid):>6.0f} MiB, "
                f"new /healthz: {await healthz(port)}"
            )
        for w in state["writers"]:
            w.close()
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
