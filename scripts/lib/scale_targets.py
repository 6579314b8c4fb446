"""Check targets for scripts/scale.sh: TCP listeners and one HTTP server on loopback, recording
when every check reached them, so the spread of check starts is measured where the checks land.

  scale_targets.py PORTS_FILE EVENTS_FILE TCP_LISTENERS

Writes {"tcp": [ports...], "http": port} to PORTS_FILE once listening, and one line per TCP
accept or HTTP request, "<unix seconds>", to EVENTS_FILE. Runs until killed.
"""

import asyncio
import json
import os
import resource
import sys
import time

HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Events:
    def __init__(self, path):
        self.file = open(path, "w", buffering=1 << 16)

    def record(self):
        self.file.write(f"{time.time():.4f}\n")

    def flush_every(self, seconds):
        async def loop():
            while True:
                await asyncio.sleep(seconds)
                self.file.flush()

        return loop()


async def main(ports_file, events_file, tcp_count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    events = Events(events_file)

    async def on_tcp(reader, writer):
        events.record()
        writer.close()

    async def on_http(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                events.record()
                writer.write(HTTP_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    tcp_servers = [
        await asyncio.start_server(on_tcp, "127.0.0.1", 0, backlog=1024) for _ in range(tcp_count)
    ]
    http_server = await asyncio.start_server(on_http, "127.0.0.1", 0, backlog=1024)
    ports = {
        "tcp": [s.sockets[0].getsockname()[1] for s in tcp_servers],
        "http": http_server.sockets[0].getsockname()[1],
    }
    with open(ports_file + ".tmp", "w") as f:
        json.dump(ports, f)
    os.rename(ports_file + ".tmp", ports_file)
    await events.flush_every(0.5)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
