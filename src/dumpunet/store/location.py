"""Where a store is: a local folder or a URL, and the one opener that maps either to a zarr store.

Every read path (``info``, ``render``, ``view``, ``dumpunet.open`` ...) opens its store through
:func:`open_zarr_store`: a local path becomes a :class:`~dumpunet.store.localfiles.SafeLocalStore`
(regular files below the root only), an ``s3://`` or ``gs://`` URL zarr v3's ``ObjectStore``
(obstore: less client time per request than fsspec, docs/benchmarks.md), any other URL
(``https://host/girl.zarr``, read-only; ``az://``) zarr's ``FsspecStore``. ``BACKEND = "fsspec"``
opens every URL with fsspec (s3fs, gcsfs), as dumpunet did before; :data:`BACKENDS` keeps both.

Credentials and endpoints come from the usual environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS`` ...) or from storage
options in fsspec's names, which a :class:`StoreUrl` carries (``--storage-option KEY=VALUE`` on the
command line) and :func:`obstore_options` translates for obstore. Every failure to
reach a store (unknown scheme, missing bucket, wrong credentials, no server) is one
:class:`~dumpunet.errors.StoreError` naming the URL.

Examples
--------
>>> locate("s3://bucket/girl.zarr").name, locate("girl.zarr")
('girl.zarr', PosixPath('girl.zarr'))
>>> str(locate("s3://bucket/girl.zarr/", {"anon": "true"}))
's3://bucket/girl.zarr'
>>> parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=true", "client_kwargs={\\"region_name\\": \\"eu\\"}"])
{'endpoint_url': 'http://127.0.0.1:9000', 'anon': True, 'client_kwargs': {'region_name': 'eu'}}
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from dumpunet.errors import DumpUnetError, OptionError, StoreError, StoreNotFoundError

__all__ = ["BACKENDS", "COPY_MARKER", "OBSTORE_SCHEMES", "READ_ONLY_SCHEMES", "REMOTE_SCHEMES", "Location", "StoreUrl", "backend_of",
           "is_url", "list_sizes", "locate", "locate_all", "obstore_options", "open_zarr_store", "parse_storage_options", "read_key", "remote_error", "total_bytes", "unfinished_copy_hint"]

REMOTE_SCHEMES = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
    "http": "aiohttp", "https": "aiohttp", "memory": "fsspec",
}
"""URL schemes a store may have, and the package fsspec needs for each (``memory``: fsspec's own, for tests)."""

READ_ONLY_SCHEMES = frozenset({"http", "https"})
"""Schemes that can be read but never written (``dumpunet copy`` and ``record --out`` refuse them as targets)."""

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

FSSPEC_DEFAULTS: dict[str, dict[str, Any]] = {
    # A viewer polls a store that a recording is uploading: fsspec's listing cache would hide new chunks.
    "*": {"use_listings_cache": False},
    # s3fs asks for an object's size (a HEAD) before every whole read, to split big ones into parallel
    # ranges; chunks are small and zarr already reads many at once, so one GET per chunk is enough.
    "s3": {"max_concurrency": 1},
    "s3a": {"max_concurrency": 1},
}
"""Storage options dumpunet sets unless the user gives them, per URL scheme (``*``: all)."""


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(text, (str, StoreUrl)) and _URL.match(str(text)) is not None


@dataclass(frozen=True, eq=False)
class StoreUrl:
    """A store at a URL, with the storage options that reach it; stands where a store's ``Path`` would.

    ``name``, ``resolve()`` and ``str()`` behave as a path's do, so outputs name a remote store the
    way they name a local one. It pickles with its options, so a dask worker that gets one opens
    the store as the client did; two are equal when URL and options are (the per-process caches of
    open stores key on it).
    """

    url: str
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        m = _URL.match(self.url)
        if m is None:
            raise StoreError(f"{self.url!r} is not a URL")
        scheme = m.group(1).lower()
        if scheme not in REMOTE_SCHEMES:
            raise StoreError(f"{self.url}: unknown URL scheme {scheme!r} (stores are local folders or "
                             f"{', '.join(s + '://' for s in REMOTE_SCHEMES if s != 'memory')} URLs)")
        rest = self.url[m.end():].rstrip("/")
        if not rest:
            raise StoreError(f"{self.url}: the URL names no bucket or host")
        object.__setattr__(self, "url", f"{scheme}://{rest}")

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def read_only(self) -> bool:
        return self.scheme in READ_ONLY_SCHEMES

    def resolve(self) -> StoreUrl:
        return self

    def with_options(self, options: Mapping[str, Any]) -> StoreUrl:
        return StoreUrl(self.url, tuple(sorted({**self.storage_options, **options}.items())))

    def __str__(self) -> str:
        return self.url

    def _key(self) -> tuple[str, str]:
        return self.url, json.dumps(self.storage_options, sort_keys=True, default=repr)  # values may be dicts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreUrl) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


Location = Path | StoreUrl
"""A store's place: a local folder or a URL."""


def locate(where: str | os.PathLike[str] | StoreUrl, storage_options: Mapping[str, Any] | None = None) -> Location:
    """A local ``Path`` or a :class:`StoreUrl` (with ``storage_options``) for a path or URL."""
    if isinstance(where, StoreUrl):
        return where.with_options(storage_options) if storage_options else where
    if is_url(where):
        return StoreUrl(str(where), tuple(sorted((storage_options or {}).items())))
    if storage_options:
        raise OptionError(f"storage options are for stores given as URLs (s3://...), not for the local path {where}")
    return Path(where)


def locate_all(sources: Iterable[str | os.PathLike[str] | StoreUrl],
               storage_options: Mapping[str, Any] | None = None) -> list[Location]:
    """:func:`locate` for several stores: ``storage_options`` go to each URL (local paths take none).

    Refuses storage options when no store is a URL, as ``--storage-option`` does.
    """
    places = [locate(s) for s in sources]
    if not storage_options:
        return places
    if not any(isinstance(p, StoreUrl) for p in places):
        raise OptionError("storage options are for stores given as URLs (s3://...), and none is")
    return [p.with_options(storage_options) if isinstance(p, StoreUrl) else p for p in places]


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict; a VALUE that is JSON (true, 3, {...}) is parsed, any other is a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--storage-option {item!r}: expected KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:9000")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


# --------------------------------------------------------------------------- opening


Backend = Literal["fsspec", "obstore"]

OBSTORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs"})
"""Schemes opened with obstore by default; the others (http(s): folder listings, az, memory) with fsspec."""

_OBSTORE_NAMES = {
    # fsspec (s3fs, gcsfs) names -> obstore's; any other name goes to obstore as it is (its own names work too)
    "endpoint_url": "endpoint", "key": "access_key_id", "secret": "secret_access_key", "region_name": "region",
}


def obstore_options(url: StoreUrl, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """obstore's ``from_url`` keywords for ``url``: its storage options in fsspec's names, translated.

    The one place that maps what a user gives (``--storage-option``, xarray-style
    ``storage_options``) to obstore: ``endpoint_url`` -> ``endpoint``, ``key``/``secret``/``token``
    -> ``access_key_id``/``secret_access_key``/``session_token`` (gs: ``token`` a credentials file ->
    ``application_credentials``), ``anon`` -> ``skip_signature``, ``client_kwargs``'s ``region_name``
    and ``endpoint_url``. An ``http://`` endpoint, given or from ``AWS_ENDPOINT_URL(_S3)``, is
    allowed (fsspec needs no flag for it). Other credentials come from the environment, as obstore reads it.

    >>> obstore_options(StoreUrl("s3://b/girl.zarr", (("anon", True), ("endpoint_url", "http://127.0.0.1:9000"))), {})
    {'skip_signature': True, 'endpoint': 'http://127.0.0.1:9000', 'client_options': {'allow_http': True}}
    """
    env = os.environ if environ is None else environ
    given = url.storage_options
    given.update(given.pop("client_kwargs", None) or {})
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key == "anon":
            out["skip_signature"] = bool(value)
        elif key == "token":
            if url.scheme in ("gs", "gcs"):
                out.update({"skip_signature": True} if value == "anon" else {"application_credentials": value})
            else:
                out["session_token"] = value
        else:
            out[_OBSTORE_NAMES.get(key, key)] = value
    if url.scheme in ("s3", "s3a"):
        endpoint = out.get("endpoint") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        if str(endpoint).startswith("http://"):
            out["client_options"] = {"allow_http": True, **out.get("client_options", {})}
        if not ({"access_key_id", "skip_signature"} & out.keys()):
            out.update(_profile_credentials(env))
    return out


def _profile_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """Keys of an AWS profile (``AWS_PROFILE``, ``~/.aws/``), which obstore does not read; botocore (s3fs's) resolves them.

    Nothing where the environment has keys (obstore reads those) or there is no profile to read.
    """
    if env.get("AWS_ACCESS_KEY_ID"):
        return {}
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), env.get("AWS_CONFIG_FILE", "~/.aws/config"))
    if not env.get("AWS_PROFILE") and not any(Path(f).expanduser().is_file() for f in files):
        return {}
    try:
        import botocore.session
    except ImportError:
        return {}
    creds = botocore.session.Session(profile=env.get("AWS_PROFILE")).get_credentials()
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    out = {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key}
    return {**out, "session_token": frozen.token} if frozen.token else out


def _fsspec_store(url: StoreUrl, read_only: bool) -> ZarrStore:
    from zarr.storage import FsspecStore

    options = {**FSSPEC_DEFAULTS["*"], **FSSPEC_DEFAULTS.get(url.scheme, {}), **url.storage_options}
    return FsspecStore.from_url(url.url, storage_options=options, read_only=read_only)


def _obstore_store(url: StoreUrl, read_only: bool) -> ZarrStore:
    from obstore.store import from_url
    from zarr.storage import ObjectStore

    target = url.url.replace("gcs://", "gs://", 1).replace("s3a://", "s3://", 1)
    return ObjectStore(from_url(target, **obstore_options(url)), read_only=read_only)


BACKENDS: dict[str, Callable[[StoreUrl, bool], ZarrStore]] = {"fsspec": _fsspec_store, "obstore": _obstore_store}
"""How a URL becomes a zarr store (docs/benchmarks.md compares the two)."""

BACKEND: Backend = "obstore"
"""The backend of :data:`OBSTORE_SCHEMES` (``"fsspec"``: every scheme through fsspec, as before)."""


def backend_of(url: StoreUrl, backend: Backend | None = None) -> Backend:
    """The backend that opens ``url``: ``backend`` or :data:`BACKEND` where obstore serves the scheme, else fsspec."""
    chosen = backend or BACKEND
    return chosen if chosen == "fsspec" or url.scheme in OBSTORE_SCHEMES else "fsspec"


def open_zarr_store(where: str | os.PathLike[str] | StoreUrl, *, mode: Literal["r", "r+", "w"] = "r",
                    backend: Backend | None = None) -> ZarrStore:
    """The zarr store at a local path or URL (not yet checked to hold a dumpunet store).

    A local path must be an existing folder unless ``mode`` is ``"w"``; a URL of a read-only scheme
    (http, https) is refused for writing.
    """
    from dumpunet.store.localfiles import SafeLocalStore

    loc = locate(where)
    if isinstance(loc, Path):
        if mode != "w":
            if not loc.exists():
                raise StoreNotFoundError(f"no store at {loc}")
            if not loc.is_dir():
                raise StoreError(f"{loc} is a file, not a store directory")
        return SafeLocalStore(loc, read_only=mode == "r")
    if mode != "r" and loc.read_only:
        raise StoreError(f"{loc}: {loc.scheme}:// URLs are read-only; write to a local folder or s3://, gs://")
    chosen = backend_of(loc, backend)
    try:
        return BACKENDS[chosen](loc, mode == "r")
    except ImportError as exc:
        package = "obstore" if chosen == "obstore" else REMOTE_SCHEMES[loc.scheme]
        raise StoreError(f"{loc}: reading {loc.scheme}:// URLs needs the package {package} "
                         f"(pip install 'dumpunet[remote]'): {exc}") from None
    except Exception as exc:  # noqa: BLE001  a bad storage option or URL fails inside the backend's constructor
        raise remote_error(loc, exc) from None


def read_key(store: ZarrStore, key: str, where: Location) -> bytes | None:
    """The bytes of one key of a remote store (None if it is missing), failures as one StoreError."""
    try:
        buf = sync(store.get(key, prototype=default_buffer_prototype()))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001  network, credentials, bucket: one message naming the URL
        raise remote_error(where, exc, key) from None
    return None if buf is None else buf.to_bytes()


def remote_error(where: Location, exc: BaseException, key: str | None = None) -> StoreError:
    """One readable StoreError for a failure of a remote store (credentials, bucket, network)."""
    what = f"{where}/{key}" if key else str(where)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(exc, PermissionError) or re.search(r"AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|Forbidden|403",
                                                     text):
        return StoreError(f"{what}: access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, or --storage-option)")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return StoreNotFoundError(f"no store at {what} ({text})")
    if isinstance(exc, (ConnectionError, TimeoutError)) or re.search(r"connect|resolve|timed? ?out", text, re.I):
        return StoreError(f"{what}: cannot reach the server ({text})")
    return StoreError(f"{what}: {type(exc).__name__}: {text}")


def list_sizes(store: ZarrStore, where: Location) -> dict[str, int]:
    """Every key below a store and its byte size, from listings (a local folder: its regular files).

    Hidden names (a writer's ``.name.tmp`` files) are left out. Raises StoreError where the store
    cannot be listed (http).
    """
    from zarr.storage import FsspecStore, LocalStore, ObjectStore

    try:
        if isinstance(store, LocalStore):
            return _local_sizes(Path(store.root))
        if isinstance(store, FsspecStore):
            found = sync(store.fs._find(store.path, detail=True, withdirs=False))
            sizes = {k.removeprefix(f"{store.path}/"): int(v.get("size") or 0) for k, v in found.items()}
        elif isinstance(store, ObjectStore):
            sizes = {m["path"]: int(m["size"]) for batch in store.store.list() for m in batch}
        else:
            raise StoreError(f"{where}: cannot list a {type(store).__name__}")
    except DumpUnetError:
        raise
    except Exception as exc:  # noqa: BLE001  network, credentials, a server that cannot list
        raise remote_error(where, exc) from None
    return {k: v for k, v in sizes.items() if not any(part.startswith(".") for part in k.split("/"))}


def _local_sizes(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, dirs, files in os.walk(root):  # os.walk does not follow links to folders
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for f in files:
            if f.startswith("."):
                continue
            info = os.lstat(os.path.join(dirpath, f))
            if stat.S_ISREG(info.st_mode):  # a link or special file is not the store's (validate names it)
                out[f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")] = info.st_size
    return out


def total_bytes(store: ZarrStore, where: Location) -> int | None:
    """Bytes of every object below a remote store, from listings (None where it cannot be listed: http)."""
    try:
        return sum(list_sizes(store, where).values())
    except StoreError:
        return None


COPY_MARKER = "dumpunet-copy.partial"
"""Key that ``dumpunet copy`` writes into its target first and deletes last (after the root's zarr.json)."""


def unfinished_copy_hint(store: ZarrStore) -> str:
    """``"; an unfinished dumpunet copy ..."`` where a store without zarr.json holds the copy marker, else ``""``."""
    try:
        marked = bool(sync(store.exists(COPY_MARKER)))
    except Exception:  # noqa: BLE001  only a hint
        return ""
    return "; it is an unfinished 'dumpunet copy': run the same copy again to finish it" if marked else ""
