"""``dumpunet view``: a local web page (and notebook objects) to explore a store interactively.

:mod:`.state` (a view as a value and a URL query), :mod:`.structure` (the store as JSON),
:mod:`.adapter` (draws a view with the analyzer), :mod:`.views` (:class:`Rendered` for
notebooks), :mod:`.server` (the HTTP server), ``static/`` (the page: plain HTML, JS and CSS).
"""

from __future__ import annotations

from dumpunet.viewer.state import ViewState

__all__ = ["ViewState"]
