"""The viewer inside a notebook cell: ``store.show()`` and ``dumpunet.view(store)``.

The cell shows an ``<iframe>`` of the same page ``dumpunet view`` serves, from one
:class:`~dumpunet.viewer.server.ViewerServer` per process, started on a background thread on
127.0.0.1 (a free port) at the first call; later calls add their store to it. :func:`close`
stops it, and it stops at the interpreter's exit. Why an iframe and not a widget: docs/viewer.md.

The returned :class:`ViewerFrame` displays through ``_repr_html_``, the plain protocol Jupyter
asks every object for, so IPython is not needed to build or display it.

Examples
--------
>>> import dumpunet
>>> frame = dumpunet.view("girl.zarr", block="OUT11", step=20)  # doctest: +SKIP
>>> frame.url  # doctest: +SKIP
'http://127.0.0.1:40123/?block=OUT11&step=20'
"""

from __future__ import annotations

import atexit
import html
import os
import threading
from dataclasses import dataclass, fields
from typing import Any

from dumpunet.errors import SelectionError
from dumpunet.store import Store
from dumpunet.viewer.server import ViewerServer, start
from dumpunet.viewer.state import ViewState

__all__ = ["ViewerFrame", "close", "server", "view"]

_server: ViewerServer | None = None
_lock = threading.Lock()


@dataclass(frozen=True)
class ViewerFrame:
    """The viewer of one store as a notebook cell shows it: an iframe to ``url``."""

    url: str
    width: str = "100%"
    height: int = 720

    def _repr_html_(self) -> str:
        return (f'<iframe src="{html.escape(self.url)}" width="{html.escape(self.width)}" height="{int(self.height)}" '
                'style="border: 1px solid #ccc" title="dumpunet view"></iframe>')

    def __repr__(self) -> str:
        return f"<dumpunet viewer at {self.url}>"


def server() -> ViewerServer:
    """The process's viewer server, started on a background thread at the first call."""
    global _server
    with _lock:
        if _server is None:
            _server = start([])
        return _server


def view(store: Store | str | os.PathLike[str], /, *, height: int = 720, **state: Any) -> ViewerFrame:
    """Show the viewer of ``store`` in a notebook cell; ``state``: the view's fields (:class:`ViewState`).

    Examples
    --------
    >>> dumpunet.view("girl.zarr", view="attention", token=2)  # doctest: +SKIP
    <dumpunet viewer at http://127.0.0.1:40123/?view=attention&token=2>
    """
    unknown = sorted(set(state) - {f.name for f in fields(ViewState)} | ({"store"} & set(state)))
    if unknown:
        raise SelectionError(f"unknown view field {unknown[0]!r} (valid: {', '.join(f.name for f in fields(ViewState)[1:])})")
    first = ViewState(**state)
    srv = server()
    query = first.with_(store=srv.add(store.path if isinstance(store, Store) else store)).query()
    return ViewerFrame(srv.url + ("?" + query if query else ""), height=height)


def close() -> None:
    """Stop the process's viewer server (a later :func:`view` starts a new one); registered at exit."""
    global _server
    with _lock:
        srv, _server = _server, None
    if srv is not None:
        srv.stop()


atexit.register(close)
