"""Move stores between a local folder and a URL: ``dumpunet copy`` and the upload of ``record --out URL``.

Both write a store's keys in an order that keeps every state of the target safe to read:

- :func:`copy_store` writes the marker :data:`~dumpunet.store.location.COPY_MARKER` first, then
  every key but the root's ``zarr.json``, then that (the store only now exists), verifies every
  array's chunk count and every size, and deletes the marker. Run again after an interrupt, it
  skips the keys already there with the same size. An interrupted copy has no root document, so no
  reader mistakes it for a store (they say it is an unfinished copy).
- :class:`Uploader` mirrors a store that a recording is writing, in rounds: each round first reads
  what claims completion (the root's and the runs' attributes, then the ``call_done`` tables), then
  uploads chunks, array documents and call tables as they are now, and the claims last. The
  writer sets a claim only after what it claims is written, so the remote store never claims a
  call whose chunks it lacks: every completed step is readable there, also after an interrupt.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from dumpunet.errors import DumpUnetError, RecordError, StoreError
from dumpunet.store import schema
from dumpunet.store.location import (
    COPY_MARKER,
    Location,
    StoreUrl,
    list_sizes,
    locate,
    open_zarr_store,
    read_key,
    remote_error,
)

__all__ = ["CopyReport", "Uploader", "check_upload_target", "copy_store", "drop_other_runs", "fetch_documents", "key_rank",
           "upload_interval"]

CONCURRENCY = 16
"""Keys in flight at once: object stores answer many small requests in parallel far faster than in turn."""

_CALL_TABLE = re.compile(r"^runs/[^/]+/call_(step|substep|timestep|done)/")


def key_rank(key: str) -> int:
    """Where a key goes in a safe write order: chunks 0, array documents 1, call tables 2, group
    documents 3 (deepest first within), ``call_done`` 4, the root document 5.

    Examples
    --------
    >>> sorted(["zarr.json", "runs/main/call_done/c.0", "runs/main/blocks/IN00/output/c.0.0.0.0.0.0",
    ...         "runs/main/zarr.json"], key=key_rank)[::3]
    ['runs/main/blocks/IN00/output/c.0.0.0.0.0.0', 'zarr.json']
    """
    if key == "zarr.json":
        return 5
    m = _CALL_TABLE.match(key)
    if m is not None and not key.endswith("/zarr.json"):
        return 4 if m.group(1) == "done" else 2
    if key.endswith("zarr.json"):
        return 1 if _is_array_document(key) else 3
    return 0


def _is_array_document(key: str) -> bool:
    """Whether a zarr.json below the root is an array's: every array of the schema is a leaf of a run."""
    return _CALL_TABLE.match(key) is not None or re.match(r"^runs/[^/]+/(images|latents|blocks/[^/]+/[^/]+|attention/[^/]+/[^/]+)/zarr\.json$", key) is not None


def _put_order(keys: Iterable[str]) -> list[list[str]]:
    """Keys in phases of :func:`key_rank` (group documents deepest first, one phase per depth)."""
    phases: dict[tuple[int, int], list[str]] = {}
    for key in keys:
        rank = key_rank(key)
        depth = -key.count("/") if rank == 3 else 0
        phases.setdefault((rank, depth), []).append(key)
    return [sorted(phases[k]) for k in sorted(phases)]


Read = Callable[[], Awaitable[bytes]]
"""Where a key's bytes come from: a coroutine function (reads run on zarr's event loop, never nested in a thread)."""


async def _put_all(store: ZarrStore, items: Iterable[tuple[str, Read]], done: Callable[[int], None]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    proto = default_buffer_prototype()

    async def put(key: str, read: Read) -> None:
        async with gate:
            data = await read()
            await store.set(key, proto.buffer.from_bytes(data))
            done(len(data))

    tasks = [asyncio.ensure_future(put(k, r)) for k, r in items]
    if not tasks:
        return
    finished, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:  # one failure stops the rest: nothing keeps writing after the error is reported
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()


async def _aget(store: ZarrStore, key: str) -> bytes:
    buf = await store.get(key, prototype=default_buffer_prototype())
    if buf is None:
        raise StoreError(f"{key} vanished while it was copied")
    return buf.to_bytes()


def _get(store: ZarrStore, key: str) -> bytes:
    return sync(_aget(store, key))


# --------------------------------------------------------------------------- copy


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_store` did."""

    keys: int  # keys of the source
    copied: int  # keys written
    skipped: int  # keys already at the target with the same size (a resumed copy)
    bytes_copied: int
    arrays: int  # arrays whose chunk counts were verified


def copy_store(src: str | os.PathLike[str] | StoreUrl, dst: str | os.PathLike[str] | StoreUrl, *,
               progress: bool = False) -> CopyReport:
    """Copy a dumpunet store between a folder and a URL (either way, or URL to URL), resumably.

    The target must be empty, missing, or an unfinished copy of the same source (then the keys
    already there with the source's size are skipped). At the end every array's chunk count and
    every key's size are compared with the source's.

    Examples
    --------
    >>> copy_store("girl.zarr", "s3://bucket/girl.zarr")  # doctest: +SKIP
    CopyReport(keys=1214, copied=1214, skipped=0, bytes_copied=88604672, arrays=58)
    """
    from tqdm import tqdm

    s, d = locate(src), locate(dst)
    if str(s) == str(d) or (isinstance(s, Path) and isinstance(d, Path) and s.resolve() == d.resolve()):
        raise StoreError(f"{s} is both the source and the target")
    schema.open_root(s)  # a dumpunet store, readable, of a format this version knows
    source = open_zarr_store(s)
    target = open_zarr_store(d, mode="w")
    sizes = {k: v for k, v in list_sizes(source, s).items() if k != COPY_MARKER}
    there = list_sizes(target, d) if _exists(d) else {}
    marker = json.dumps({"source": str(s), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    if there:
        _check_resumable(target, d, s, there)
    else:
        _write(target, d, COPY_MARKER, marker.encode())
    todo = [k for k in sizes if k == "zarr.json" or there.get(k) != sizes[k]]
    bar = tqdm(total=sum(sizes[k] for k in todo), unit="B", unit_scale=True, desc="copy", disable=not progress,
               leave=False)
    try:
        for phase in _put_order(todo):
            try:
                sync(_put_all(target, [(k, _reader(source, k)) for k in phase], bar.update))
            except DumpUnetError:
                raise
            except Exception as exc:  # noqa: BLE001  network, credentials, disk: one message naming the target
                raise remote_error(d, exc) from None
    finally:
        bar.close()
    arrays = _verify(sizes, list_sizes(target, d), s, d)
    sync(target.delete(COPY_MARKER))
    return CopyReport(len(sizes), len(todo), len(sizes) - len(todo), sum(sizes[k] for k in todo), arrays)


def _exists(d: Location) -> bool:
    return d.exists() if isinstance(d, Path) else True


def _reader(store: ZarrStore, key: str) -> Read:
    return lambda: _aget(store, key)


def _write(store: ZarrStore, where: Location, key: str, data: bytes) -> None:
    try:
        sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))
    except Exception as exc:  # noqa: BLE001
        raise remote_error(where, exc, key) from None


def _check_resumable(target: ZarrStore, d: Location, s: Location, there: Mapping[str, int]) -> None:
    """Refuse a non-empty target unless it is an unfinished copy of this very source."""
    if COPY_MARKER not in there:
        what = "a store" if "zarr.json" in there else f"{len(there)} file(s) that are no unfinished dumpunet copy"
        raise StoreError(f"{d} already holds {what}; copy to a new place (or delete it first)")
    try:
        started = json.loads(_get(target, COPY_MARKER))
    except (ValueError, StoreError):
        started = {}
    if not isinstance(started, dict) or started.get("source") != str(s):
        got = started.get("source") if isinstance(started, dict) else None
        raise StoreError(f"{d} is an unfinished copy of {got or 'another store'}, not of {s}; "
                         "finish that copy or copy to a new place")


def _verify(src: Mapping[str, int], dst: Mapping[str, int], s: Location, d: Location) -> int:
    """Compare chunk counts per array and every size; return the number of arrays checked."""
    def per_array(sizes: Mapping[str, int]) -> Counter[str]:
        return Counter(k.rsplit("/", 1)[0] for k in sizes if not k.endswith("zarr.json") and "/" in k)

    want, got = per_array(src), per_array(dst)
    for array in sorted(want):
        if got[array] != want[array]:
            raise StoreError(f"{d}: {array} holds {got[array]} chunk(s) after the copy, {s} holds {want[array]}; "
                             "run the copy again")
    wrong = sorted(k for k, n in src.items() if dst.get(k) != n)
    if wrong:
        raise StoreError(f"{d}: {wrong[0]} is {dst.get(wrong[0], 'missing')} bytes after the copy, {s} has "
                         f"{src[wrong[0]]} ({len(wrong)} key(s) differ); run the copy again")
    return len(want)


# --------------------------------------------------------------------------- upload while recording


def check_upload_target(remote: StoreUrl, *, overwrite: bool, delete: bool = True) -> None:
    """Refuse to record to a URL that holds anything, unless it is a dumpunet store and ``overwrite``
    (then delete it, unless not ``delete``: a dry run)."""
    store = open_zarr_store(remote, mode="w")
    there = list_sizes(store, remote)
    if not there:
        return
    if overwrite and "zarr.json" in there:
        schema.open_root(remote)  # only a dumpunet store is replaced
        if not delete:
            return
        try:
            sync(store.delete_dir(""))
        except Exception as exc:  # noqa: BLE001
            raise remote_error(remote, exc) from None
        return
    what = "a store (--overwrite replaces a dumpunet store)" if "zarr.json" in there else f"{len(there)} object(s)"
    raise RecordError(f"--out {remote} already holds {what}; choose another URL")


RESUME_DOCUMENTS = ("zarr.json", f"{schema.RUNS_GROUP}/zarr.json")
"""What a writer adding runs to a store (``record --prompts`` resuming) opens: the root's and the runs group's documents."""


def fetch_documents(remote: StoreUrl, local: Path) -> None:
    """Fetch the root's and the runs group's documents of the store at ``remote`` into the new folder ``local``.

    A writer that keeps runs opens them there and adds runs; the kept runs' arrays stay on the
    remote store only (the :class:`Uploader` never deletes, so they are left as they are).
    """
    store = open_zarr_store(remote)
    for key in RESUME_DOCUMENTS:
        data = read_key(store, key, remote)
        if data is None:
            continue
        path = local / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def drop_other_runs(remote: StoreUrl, local: Path) -> list[str]:
    """Upload ``local``'s root document, then delete every run folder of ``remote`` it does not list; return their names.

    After a writer reopened ``local`` keeping some runs (an interrupted one is recorded again):
    the remote root stops listing the dropped runs before their folders go, as the writer does
    on disk, so a reader never opens a run half deleted.
    """
    store = open_zarr_store(remote, mode="w")
    root = (local / "zarr.json").read_bytes()
    listed = set(schema.RootAttrs.from_json(dict(schema.open_root(local).attrs), str(local)).runs)
    prefix = f"{schema.RUNS_GROUP}/"
    folders = sorted({k[len(prefix):].split("/", 1)[0] for k in list_sizes(store, remote)
                      if k.startswith(prefix) and k.count("/") >= 2})
    dropped = [name for name in folders if name not in listed]
    try:
        sync(store.set("zarr.json", default_buffer_prototype().buffer.from_bytes(root)))
        for name in dropped:
            sync(store.delete_dir(f"{prefix}{name}"))
    except Exception as exc:  # noqa: BLE001
        raise remote_error(remote, exc) from None
    return dropped


class Uploader:
    """Mirror a store a recording writes (``local``) to ``remote``, in rounds on a background thread.

    :meth:`start` uploads a round every ``interval`` seconds; :meth:`close` stops the thread and
    uploads a last round (call it also after an interrupt: every completed step reaches the
    remote store). Errors of the thread surface from :meth:`close`.
    """

    def __init__(self, local: Path, remote: StoreUrl, *, interval: float = 2.0) -> None:
        self.local = local
        self.remote = remote
        self.interval = interval
        self.store = open_zarr_store(remote, mode="w")
        self.sent: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) of what was uploaded
        self.claims: dict[str, bytes] = {}  # completion claims as last uploaded
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> Uploader:
        self._thread = threading.Thread(target=self._loop, name="dumpunet-upload", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.upload_round()
            except BaseException as exc:  # noqa: BLE001  reported by close()
                self._error = exc
                return

    def close(self) -> None:
        """Stop the background rounds, then upload one last round."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error if isinstance(self._error, DumpUnetError) else remote_error(self.remote, self._error)
        self.upload_round()

    def upload_round(self) -> int:
        """Upload what changed since the last round, claims last; return the number of keys sent."""
        if not (self.local / "zarr.json").is_file():
            return 0  # the recording has not created its store yet
        # 1. claims first, as they are now: whatever they claim is on disk before they were written
        claims: dict[str, bytes] = {}
        for key in self._claim_keys():
            data = self._read(key)
            if data is not None:
                claims[key] = data
        # 2. everything else as it is now (at least as new as the claims)
        rest: list[str] = []
        stamps: dict[str, tuple[int, int]] = {}
        for key in list_sizes(open_zarr_store(self.local), self.local):
            if key in claims or key == COPY_MARKER:
                continue
            try:
                info = os.stat(self.local / key)
            except FileNotFoundError:
                continue
            stamp = (info.st_size, info.st_mtime_ns)
            if self.sent.get(key) != stamp:
                rest.append(key)
                stamps[key] = stamp
        changed_claims = [k for k, v in claims.items() if self.claims.get(k) != v]
        try:
            for phase in _put_order(rest):
                sync(_put_all(self.store, [(k, self._file(k)) for k in phase], lambda n: None))
            for phase in _put_order(changed_claims):
                sync(_put_all(self.store, [(k, _constant(claims[k])) for k in phase], lambda n: None))
        except DumpUnetError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.remote, exc) from None
        self.sent.update(stamps)
        self.claims.update({k: claims[k] for k in changed_claims})
        self.rounds += 1
        return len(rest) + len(changed_claims)

    def _claim_keys(self) -> list[str]:
        """The root document, every run's group document, every call_done chunk, in the order they are read."""
        keys = ["zarr.json"]
        runs = self.local / "runs"
        names = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
        keys += ["runs/zarr.json"] + [f"runs/{n}/zarr.json" for n in names]
        for n in names:
            done = runs / n / schema.CALL_DONE.key
            if done.is_dir():
                keys += sorted(f"runs/{n}/{schema.CALL_DONE.key}/{f.name}" for f in done.iterdir()
                               if f.is_file() and not f.name.startswith(".") and f.name != "zarr.json")
        return keys

    def _read(self, key: str) -> bytes | None:
        try:
            return (self.local / key).read_bytes()
        except FileNotFoundError:
            return None

    def _file(self, key: str) -> Read:
        async def read() -> bytes:
            data = await asyncio.to_thread(self._read, key)
            return b"" if data is None else data

        return read


def _constant(data: bytes) -> Read:
    async def read() -> bytes:
        return data

    return read


def upload_interval() -> float:
    """Seconds between upload rounds while recording (``DUMPUNET_UPLOAD_INTERVAL``, default 2)."""
    try:
        return max(0.1, float(os.environ.get("DUMPUNET_UPLOAD_INTERVAL", "2")))
    except ValueError:
        return 2.0
