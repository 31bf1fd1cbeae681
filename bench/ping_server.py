"""The HTTP floor's server: a trivial FastAPI `/ping` on uvicorn, on 127.0.0.1 only.

Run as `python bench/ping_server.py`: uvicorn binds a free port, the script prints `PORT <n>`
once listening and serves until it is terminated.
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


def main() -> None:
    # bound by uvicorn itself, as `orch serve` is: asyncio then turns Nagle off on every
    # accepted connection (a socket made here with proto 0 would keep it, and add ~40 ms)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
    sys.exit(0)
