"""A real S3 API server on loopback for the remote-store tests and benchmarks: moto in server mode.

Two ways to run it, with the same interface (``endpoint``, ``new_bucket``, ``log``, ``clear``, ``stop``):

- :class:`S3Server` starts moto's ``ThreadedMotoServer`` on 127.0.0.1 in the calling process;
- :class:`S3Process` runs this file as a script: moto's own WSGI app on 127.0.0.1 in a process of
  its own, as a real S3 server is, so its request handling does not share the caller's GIL.

Both log every request they answer (method, key, status, bytes sent), so a test can count what a
read transferred; :class:`S3Process` hands its log over at ``GET /_log`` (``DELETE /_log`` clears
it; ``_log`` cannot be a bucket name, and those requests are not logged). Clients reach the server
only through ``endpoint_url`` (fsspec) / ``endpoint`` (obstore) and the dummy credentials of
:data:`ENV`; nothing else is contacted.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
"""Dummy credentials (moto accepts any); tests set them and unset every other AWS_* variable."""

LOG_PATH = "/_log"
"""Where :class:`S3Process`'s server hands over (GET) and clears (DELETE) its request log."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # /bucket/key, unquoted
    query: str
    status: int
    sent: int  # response body bytes
    in_flight: int  # other requests being answered when this one came in


class RequestLog:
    """The requests a server answered, appended by its handler threads."""

    def __init__(self) -> None:
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._in_flight = 0

    def wrap(self, app: Any) -> Any:
        """``app`` (a WSGI app) logging each request it answers."""

        def logged(environ: dict[str, Any], start_response: Any) -> Any:
            status: list[int] = []

            def start(code: str, headers: Any, *rest: Any) -> Any:
                status.append(int(code.split()[0]))
                return start_response(code, headers, *rest)

            with self._lock:
                others = self._in_flight
                self._in_flight += 1
            try:
                body = list(app(environ, start))
            finally:
                with self._lock:
                    self._in_flight -= 1
            with self._lock:
                self._requests.append(Request(environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")),
                                              environ.get("QUERY_STRING", ""), status[0] if status else 0,
                                              sum(len(b) for b in body), others))
            return body

        return logged

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def list(self) -> list[Request]:
        with self._lock:
            return list(self._requests)


class _Client:
    """What both servers offer once ``endpoint`` is known."""

    endpoint: str

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


class S3Server(_Client):
    """moto's S3 on ``127.0.0.1:<port>`` (a free one by default) in this process, logging each request."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._log = RequestLog()
        wsgi = self._server._server  # the werkzeug server: wrap its app to log requests
        wsgi.app = self._log.wrap(wsgi.app)

    def clear(self) -> None:
        self._log.clear()

    def log(self) -> list[Request]:
        return self._log.list()

    def stop(self) -> None:
        self._server.stop()


class S3Process(_Client):
    """moto's S3 on ``127.0.0.1:<port>`` (a free one by default) in a process of its own, logging each request.

    The process ends at :meth:`stop`, and by itself when this one ends (it serves until its stdin closes).
    """

    def __init__(self, port: int = 0, timeout: float = 60.0) -> None:
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--port", str(port)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.endpoint = self._read_endpoint(timeout)
            self._wait_until_it_answers(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_endpoint(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            raise OSError(f"moto's S3 process did not start (exit status {self._proc.poll()}, said {line!r})")
        return line

    def _wait_until_it_answers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET")
                return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def _call(self, method: str) -> bytes:
        with urllib.request.urlopen(urllib.request.Request(self.endpoint + LOG_PATH, method=method), timeout=30) as r:
            return r.read()

    def clear(self) -> None:
        self._call("DELETE")

    def log(self) -> list[Request]:
        return [Request(**r) for r in json.loads(self._call("GET"))]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self) -> None:
        """End the server process (closing its stdin ends it; terminate it if it does not)."""
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            self._proc.wait()


def _serve(port: int) -> None:
    """Serve moto's S3 on 127.0.0.1:``port``; print the endpoint; end when stdin closes."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    log = RequestLog()
    moto_app = log.wrap(DomainDispatcherApplication(create_backend_app))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != LOG_PATH:
            return moto_app(environ, start_response)
        if environ["REQUEST_METHOD"] == "DELETE":
            log.clear()
        body = json.dumps([asdict(r) for r in log.list()]).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    host, port = server.server_address[:2]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://{host}:{port}", flush=True)
    sys.stdin.read()  # until the parent closes it or ends
    server.shutdown()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    _serve(parser.parse_args().port)
