"""The nemesis's delaying TCP proxies (netem is not available): one process, one listener per
ordered broker pair. Every byte read from the connecting broker is written to the target no
earlier than the pair's delay after it was read, in order (the Rust bench's `DelayProxy` does
the same); answers are not delayed.

    python nemesis_proxy.py NAME=LISTEN_IP:PORT=TARGET_IP:PORT ...

Reads commands on stdin, one per line: ``delay NAME MS``. Prints ``ready`` once every
listener is bound. Exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

delays: dict[str, float] = {}


async def relay(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]):
    try:
        sr, sw = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def up_read():
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delays.get(name, 0.0), data))
            if not data:
                return

    async def up_write():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            sw.write(data)
            await sw.drain()

    async def down():
        while True:
            data = await sr.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.ensure_future(t()) for t in (up_read, up_write, down)]
    try:
        # Either side closing (or failing) ends the whole connection.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except Exception:
        pass
    finally:
        for t in tasks:
            t.cancel()
        for w in (writer, sw):
            try:
                w.close()
            except Exception:
                pass


async def main(specs: list[str]) -> None:
    for spec in specs:
        name, listen, target = spec.split("=")
        lh, lp = listen.rsplit(":", 1)
        th, tp = target.rsplit(":", 1)
        delays[name] = 0.0
        await asyncio.start_server(
            lambda r, w, n=name, t=(th, int(tp)): relay(n, r, w, t), lh, int(lp), reuse_address=True
        )
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while True:
        line = await stdin.readline()
        if not line:
            return
        parts = line.decode().split()
        if len(parts) == 3 and parts[0] == "delay":
            delays[parts[1]] = int(parts[2]) / 1000.0


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
