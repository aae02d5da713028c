"""The local HTTP server behind ``dumpunet view``: the page, store structure as JSON, views as PNG.

The standard library's :class:`~http.server.ThreadingHTTPServer`, bound to 127.0.0.1 only: no
dependency, and one local user needs no more (see docs/viewer.md). It serves only the stores
named when it starts, by index; no request parameter ever reaches the file system. Routes:

========================  ===================================================================
``/``                     the page (``static/index.html``)
``/static/NAME``          the page's files, from a fixed list read at start
``/api/stores``           ``{"stores": [{"index", "name"}], "defaults": {field: default}}``
``/api/structure?store``  :func:`~dumpunet.viewer.structure.structure` (re-reads the store, so
                          a recording in progress shows its new steps)
``/api/image?STATE``      the PNG of a :class:`~dumpunet.viewer.state.ViewState` (``minus``: another
                          served store's index, subtracted); ``download=1``
                          adds a file name; errors are JSON ``{"error": message}`` (status 400);
                          a channel grid's ``X-Grid: cols,rows,tile h,tile w`` and, for a subset,
                          ``X-Channels`` (the tiles' channels, e.g. ``0-3,7``) map clicks to channels
``/api/command?STATE``    ``{"command", "query", "file", "color"}``: the CLI line that writes this
                          view, and its colours (the state's, the view's defaults for the rest)
``/api/summary?STATE``    the numbers of the summary chart: ``{"rows", "legend", "query"}``, the
                          rows of diff's ``summary.csv`` (non-finite values as null)
========================  ===================================================================

PNG bytes (deflate level ``png_level``, default 0: stored) are cached per resolved view state
(an LRU of ``cache_bytes``); the ``X-Cache`` header says ``hit``, ``miss`` or ``ahead``. While
the step slider moves (a grid or attention view asked for at another step, all else the same),
the server renders the next step in the same direction on a background thread (``ahead``, on by
default), so the slider's next position is ready, or under way, when the page asks for it:
``ahead`` answers such a view the first time it is served.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dumpunet.errors import DumpUnetError
from dumpunet.store import Store, open_store
from dumpunet.store.location import StoreUrl, locate
from dumpunet.viewer.state import ViewState
from dumpunet.viewer.structure import resolve, run_for, structure

__all__ = ["ViewerServer", "start"]

HOST = "127.0.0.1"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".png": "image/png", ".svg": "image/svg+xml"}


AHEAD_VIEWS = ("grid", "attention")
"""Views whose next step is rendered ahead: one step is one chunk read (a heatmap sums every step up to its own)."""


class PngCache:
    """Least-recently-used PNG bytes by key, within a byte budget; remembers which were rendered ahead."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[Any, bytes] = OrderedDict()
        self.ahead: set[Any] = set()  # rendered ahead and not served yet
        self.size = 0
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    def get(self, key: Any) -> tuple[bytes | None, str]:
        """The bytes of ``key`` and how they got here: ``hit``, ``ahead`` (first served now), or None and ``miss``."""
        with self.lock:
            data = self.items.get(key)
            if data is None:
                self.misses += 1
                return None, "miss"
            self.items.move_to_end(key)
            self.hits += 1
            if key in self.ahead:
                self.ahead.discard(key)
                return data, "ahead"
            return data, "hit"

    def __contains__(self, key: Any) -> bool:
        with self.lock:
            return key in self.items

    def put(self, key: Any, data: bytes, *, ahead: bool = False) -> None:
        with self.lock:
            if key in self.items or len(data) > self.max_bytes:
                return
            self.items[key] = data
            self.size += len(data)
            if ahead:
                self.ahead.add(key)
            while self.size > self.max_bytes:
                old_key, old = self.items.popitem(last=False)
                self.size -= len(old)
                self.ahead.discard(old_key)


class ViewerServer(ThreadingHTTPServer):
    """Serves the viewer for a fixed list of stores on 127.0.0.1."""

    daemon_threads = True

    def __init__(self, paths: Sequence[str | Path | StoreUrl], *, port: int = 0, cache_bytes: int = 256 << 20,
                 png_level: int = 0, quiet: bool = True, ahead: bool = True) -> None:
        self.paths = [locate(p) for p in paths]  # folders or URLs
        self.stores: list[Store] = [open_store(p) for p in self.paths]
        self.cache = PngCache(cache_bytes)
        self.render_lock = threading.Lock()  # numba's workqueue layer is not thread-safe; one user anyway
        self.quiet = quiet
        self.thread: threading.Thread | None = None  # the background thread of start()
        # Level 0 (stored deflate): over loopback, bytes are free and deflate is most of a view's time
        # (benchmarks/view.py: an SD1.5 OUT11 grid encodes in 15 ms CPU at level 0, 83 ms at level 1).
        self.png_level = png_level
        self.ahead = ahead  # render the slider's next step in the background (module docstring)
        self._last: ViewState | None = None  # the view served last: a step away from it, the slider moves
        self._next: tuple[Store, ViewState, Store | None] | None = None  # the view to render ahead
        self._wake = threading.Condition()
        self._ahead_thread: threading.Thread | None = None
        static = resources.files("dumpunet.viewer") / "static"
        self.static = {f.name: f for f in static.iterdir() if f.is_file() and Path(f.name).suffix in _TYPES}
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as exc:
            raise DumpUnetError(f"cannot serve on {HOST}:{port}: {exc.strerror or exc} (try another --port)") from None

    def stop(self) -> None:
        """Stop a server that :func:`start` started: end its loop, close its socket, wait for its thread."""
        self.shutdown()  # returns once serve_forever has stopped
        self.server_close()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def add(self, path: str | Path | StoreUrl) -> int:
        """Serve one more store (a notebook's ``show()``); return its index (the old one if already served)."""
        path = locate(path)
        with self.render_lock:
            for i, known in enumerate(self.paths):
                if known.resolve() == path.resolve():
                    return i
            store = open_store(path)
            self.paths.append(path)
            self.stores.append(store)
            return len(self.stores) - 1

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def store(self, index: str | None) -> tuple[int, Store]:
        if index is None or not re.fullmatch(r"\d{1,4}", index) or int(index) >= len(self.stores):
            raise _NotFound(f"no store {index!r} (this server shows stores 0..{len(self.stores) - 1})")
        return int(index), self.stores[int(index)]

    def refresh(self, i: int) -> Store:
        """Re-open store ``i`` so that steps written since show; keep the old object on failure."""
        try:
            self.stores[i] = open_store(self.paths[i])
        except DumpUnetError:
            pass
        return self.stores[i]

    def state(self, params: dict[str, str]) -> tuple[Store, ViewState]:
        i, _ = self.store(params.get("store", "0"))
        if "minus" in params and params["minus"] != "-1":
            self.store(params["minus"])
        st = self.stores[i]
        return st, resolve(st, ViewState.from_query(params))

    def png(self, params: dict[str, str]) -> tuple[bytes, ViewState, dict[str, str]]:
        """PNG bytes of a view, its resolved state, and headers: ``X-Cache`` (hit, miss), ``X-Grid``, ``X-Channels``."""
        from dumpunet.analyzer.png import encode_png
        from dumpunet.specs import format_ints
        from dumpunet.viewer.adapter import grid_channels
        from dumpunet.viewer.views import grid_layout, render_view

        st, state = self.state(params)
        layout = grid_layout(st, state)
        headers = {"X-Grid": ",".join(map(str, layout))} if layout else {}
        if layout and state.channels:
            headers["X-Channels"] = format_ints(grid_channels(st, state) or [])
        minus = self.stores[state.minus] if state.minus >= 0 else None
        data, how = self.cache.get(state)
        if data is None:
            with self.render_lock:
                data, how = self.cache.get(state)  # rendered ahead while this request waited
                pixels = render_view(st, state, minus) if data is None else None
            if pixels is not None:
                data = encode_png(pixels, level=self.png_level)
                self.cache.put(state, data)
        self._plan_ahead(st, state, minus)
        return data, state, {"X-Cache": how, **headers}

    def _plan_ahead(self, st: Store, state: ViewState, minus: Store | None) -> None:
        """After a step change of a grid or attention view, render the next step in the same direction in the background."""
        last, self._last = self._last, state
        if not self.ahead or state.view not in AHEAD_VIEWS or last is None or last.step == state.step:
            return
        if last.with_(step=state.step) != state:
            return  # not the slider: something else changed too
        steps = run_for(st, state.run, state.pair, state.mode).steps
        following = [s for s in steps if (s > state.step if state.step > last.step else s < state.step)]
        if not following:
            return
        nxt = state.with_(step=min(following) if state.step > last.step else max(following))
        if nxt in self.cache:
            return
        with self._wake:
            self._next = (st, nxt, minus)  # replaces a view not yet started: the slider has moved on
            if self._ahead_thread is None:
                self._ahead_thread = threading.Thread(target=self._render_ahead, name="dumpunet-view-ahead", daemon=True)
                self._ahead_thread.start()
            self._wake.notify()

    def _render_ahead(self) -> None:
        from dumpunet.analyzer.png import encode_png
        from dumpunet.viewer.views import render_view

        while True:
            with self._wake:
                while self._next is None:
                    self._wake.wait()
                st, state, minus = self._next
                self._next = None
            with self.render_lock:  # a request for this view waits here, then finds it in the cache
                if state in self.cache:
                    continue
                try:
                    data: bytes | None = encode_png(render_view(st, state, minus), level=self.png_level)
                except Exception:  # noqa: BLE001  a view that cannot be drawn shows its error when it is asked for
                    data = None
                if data is not None:
                    self.cache.put(state, data, ahead=True)


class _NotFound(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            if url.path in ("/", "/index.html"):
                self._static("index.html")
            elif url.path.startswith("/static/"):
                self._static(url.path[len("/static/"):])
            elif url.path == "/api/stores":
                self._json({"stores": [{"index": i, "name": p.name} for i, p in enumerate(self.server.paths)],
                            "defaults": asdict(ViewState())})
            elif url.path == "/api/structure":
                i, _ = self.server.store(params.get("store"))
                self._json(structure(self.server.refresh(i), i))
            elif url.path == "/api/image":
                self._image(params)
            elif url.path == "/api/command":
                self._command(params)
            elif url.path == "/api/summary":
                self._summary(params)
            else:
                raise _NotFound(f"no such page {url.path!r}")
        except _NotFound as exc:
            self._json({"error": str(exc)}, status=404)
        except DumpUnetError as exc:
            self._json({"error": str(exc)}, status=400)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug: the page gets one line, the console the traceback
            traceback.print_exc(file=sys.stderr)
            self._json({"error": f"internal error ({type(exc).__name__}); see the server's console"}, status=500)

    def _static(self, name: str) -> None:
        item = self.server.static.get(name)
        if item is None:
            raise _NotFound(f"no such file {name!r}")
        self._send(item.read_bytes(), _TYPES[Path(name).suffix], {"Cache-Control": "no-cache"})

    def _image(self, params: dict[str, str]) -> None:
        download = params.pop("download", "") == "1"
        data, state, headers = self.server.png(params)
        headers["Cache-Control"] = "no-store"
        if download:
            headers["Content-Disposition"] = f'attachment; filename="{_file_name(self.server, state)}"'
        self._send(data, "image/png", headers)

    def _command(self, params: dict[str, str]) -> None:
        from dumpunet.viewer.views import command_for

        st, state = self.server.state(params)
        minus = self.server.stores[state.minus] if state.minus >= 0 else None
        self._json({"command": command_for(st, state, minus), "query": state.query(),
                    "file": _file_name(self.server, state), "color": state.color})

    def _summary(self, params: dict[str, str]) -> None:
        from dumpunet.viewer.adapter import summary

        st, state = self.server.state({**params, "view": "summary"})
        minus = self.server.stores[state.minus] if state.minus >= 0 else None
        with self.server.render_lock:
            _, rows, legend = summary(st, state, minus)
        finite = [{k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in r.items()} for r in rows]
        self._json({"rows": finite, "legend": legend, "query": state.query()})

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(json.dumps(value).encode(), "application/json", {"Cache-Control": "no-store"}, status)

    def _send(self, data: bytes, kind: str, headers: dict[str, str], status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _file_name(server: ViewerServer, state: ViewState) -> str:
    stem = server.paths[state.store].name.removesuffix(".zarr")
    if state.minus >= 0:
        stem += "-minus-" + server.paths[state.minus].name.removesuffix(".zarr")
    what = {"grid": state.block + (f"-ch{state.channel_spec}" if state.channel_spec else ""), "attention": state.layer, "heatmap": f"token{state.token}",
            "query": f"x{state.qx:.3f}-y{state.qy:.3f}", "final": "final", "summary": "blocks"}[state.view]
    name = f"{stem}-{state.view}-{what}-step{state.step:03d}-img{state.image}-{state.guidance}.png"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def start(paths: Sequence[str | Path | StoreUrl], *, port: int = 0, png_level: int = 0, quiet: bool = True,
          ahead: bool = True) -> ViewerServer:
    """Start a viewer server on a background thread; ``server.url`` is its address, ``server.shutdown()`` stops it.

    Examples
    --------
    >>> server = start(["girl.zarr"])  # doctest: +SKIP
    >>> server.url  # doctest: +SKIP
    'http://127.0.0.1:40123/'
    """
    server = ViewerServer(paths, port=port, png_level=png_level, quiet=quiet, ahead=ahead)
    server.thread = threading.Thread(target=server.serve_forever, name="dumpunet-view", daemon=True)
    server.thread.start()
    return server


def serve(paths: Sequence[str | Path | StoreUrl], *, port: int = 0, open_browser: bool = True) -> None:
    """Serve until Ctrl-C: ``dumpunet view``."""
    server = ViewerServer(paths, port=port, quiet=True)
    print(f"dumpunet view: serving {', '.join(str(p) for p in server.paths)} at {server.url} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dumpunet view: stopped", file=sys.stderr)
    finally:
        server.server_close()
