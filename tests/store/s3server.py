"""A real S3 API server on loopback for the remote-store tests and benchmarks: moto in server mode.

:class:`S3Server` starts moto's ``ThreadedMotoServer`` on 127.0.0.1 at a free port and logs
every request it answers (method, key, status, bytes sent), so a test can count what a read
transferred. Clients reach it only through ``endpoint_url`` (fsspec) / ``endpoint`` (obstore) and
the dummy credentials of :data:`ENV`; nothing else is contacted.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
"""Dummy credentials (moto accepts any); tests set them and unset every other AWS_* variable."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # /bucket/key, unquoted
    query: str
    status: int
    sent: int  # response body bytes


class S3Server:
    """moto's S3 on ``127.0.0.1:<port>`` (a free one by default), logging each request."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        wsgi = self._server._server  # the werkzeug server: wrap its app to log requests
        app = wsgi.app

        def logged(environ: dict[str, Any], start_response: Any) -> Any:
            status: list[int] = []

            def start(code: str, headers: Any, *rest: Any) -> Any:
                status.append(int(code.split()[0]))
                return start_response(code, headers, *rest)

            body = list(app(environ, start))
            with self._lock:
                self.requests.append(Request(environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")),
                                             environ.get("QUERY_STRING", ""), status[0] if status else 0,
                                             sum(len(b) for b in body)))
            return body

        wsgi.app = logged

    @property
    def options(self) -> dict[str, Any]:
        """fsspec (s3fs) storage options that reach this server."""
        return {"endpoint_url": self.endpoint}

    @property
    def obstore_options(self) -> dict[str, Any]:
        """obstore options that reach this server."""
        return {"endpoint": self.endpoint, "client_options": {"allow_http": True}, "region": "us-east-1"}

    def new_bucket(self) -> str:
        """Create an empty bucket with a fresh name; return the name."""
        import s3fs

        name = f"b-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(endpoint_url=self.endpoint, key=ENV["AWS_ACCESS_KEY_ID"],
                          secret=ENV["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True).mkdir(name)
        return name

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def log(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        self._server.stop()
