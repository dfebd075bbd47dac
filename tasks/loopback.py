"""An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread: the reference scorer and
the inference service both run this way in tests, benches and the embedded default."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from tasks.errors import ServiceError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that need a fixed port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoopbackServer:
    """uvicorn on 127.0.0.1 (an ephemeral port by default); a context manager."""

    def __init__(self, app, name: str, port: int = 0, **uvicorn_options) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **uvicorn_options
        )
        self.name = name
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                port = self._server.config.port
                raise ServiceError(
                    f"the {self.name} did not start on 127.0.0.1:{port}: "
                    "the port may be in use or not allowed; pick another (0 takes a free one)"
                )
            time.sleep(0.02)

    def wait_for_interrupt(self) -> None:
        """Block until Ctrl-C (or the server exits), then stop: for servers run from a command line."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
