"""Where a store lives: a local folder or an fsspec URL (``s3://bucket/run.zarr``).

:class:`Location` opens the Zarr store object of a location and gives the few file operations
the store needs beside Zarr, the same on a local disk and on object storage:

- ``create_exclusive`` — create a small object only if it is absent (local: ``os.link`` of a
  written temporary file, atomic with its content; S3: ``PUT`` with ``If-None-Match: *``);
- ``write_atomic`` — replace a small object whole (local: temporary file + ``os.replace``;
  S3: one ``PUT``);
- listing, reading, removal of a folder (optionally keeping some entries), and moving a folder
  (local: ``rename``; object storage has no rename: ``copy_tree`` copies every object, the
  folder's ``zarr.json`` last, so that the copy is a readable group only once complete).

Credentials and endpoint of a URL come from ``storage_options`` (the campaign's key) or the
usual AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``…). Every
``OSError`` becomes a one-line :class:`UQError` naming the location (:func:`io_errors`); a
missing fsspec backend (``s3fs``) too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import is_url

__all__ = ["Location", "io_errors", "store_location"]

_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def _missing_backend(url: str, exc: ImportError) -> UQError:
    protocol = url.split("://", 1)[0]
    package = _BACKENDS.get(protocol, f"the fsspec backend of {protocol}://")
    return UQError(f"{url}: opening {protocol}:// stores needs {package}, which is not installed; pip install {package} ({exc})")


def _storage_errors() -> tuple[type[BaseException], ...]:
    """What a filesystem raises when storage fails: ``OSError``, and the errors of an object-store client
    that fsspec lets through (botocore's for an unreachable S3 endpoint or bad credentials)."""
    errors: tuple[type[BaseException], ...] = (OSError,)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return errors
    return (*errors, BotoCoreError, ClientError)


@contextlib.contextmanager
def io_errors(location: Any, action: str) -> Iterator[None]:
    """Turn a storage failure (read-only place, full disk, lost connection, unreachable endpoint) into a
    one-line UQError."""
    try:
        yield
    except (UQError, zarr.errors.BaseZarrError):
        raise
    except _storage_errors() as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UQError(
            f"{store_location(location)}: cannot {action}: {' '.join(reason.split())}; check that the location is writable, "
            "reachable and has free space"
        ) from exc


def store_location(store: Any) -> str:
    """A printable location of a store (:class:`Location`, group, Zarr store object, path or URL)."""
    if isinstance(store, Location):
        return store.url
    if isinstance(store, zarr.Group):
        store = store.store
    root = getattr(store, "root", None)
    if root is not None:
        return str(root)
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and path is not None:
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        return f"{protocol}://{path}"
    return str(path) if path is not None else str(store)


@dataclass(frozen=True)
class Location:
    """A store's place: ``url`` is an absolute local path or an fsspec URL.

    ``storage_options`` (URLs only) go to fsspec, e.g. ``{"endpoint_url": ..., "key": ...}``.
    """

    url: str
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, store: Any, storage_options: Mapping[str, Any] | None = None) -> Location:
        """The location of a path, URL, :class:`Location`, Zarr store object or group."""
        if isinstance(store, Location):
            return store
        if isinstance(store, zarr.Group):
            store = store.store
        if isinstance(store, (str, Path)):
            text = str(store)
            return cls(text if is_url(text) else str(Path(text).expanduser().resolve()), storage_options)
        root = getattr(store, "root", None)
        if root is not None:  # LocalStore
            return cls(str(root))
        fs = getattr(store, "fs", None)
        if fs is not None:  # FsspecStore: its options, without the async-only ones
            options = {k: v for k, v in dict(getattr(fs, "storage_options", {})).items() if k not in ("asynchronous", "loop")}
            return cls(store_location(store), options)
        raise UQError(f"{store!r}: not a store location; give a path or an fsspec URL")

    # -- opening -----------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not is_url(self.url)

    def fs(self) -> tuple[Any, str]:
        """``(fsspec filesystem, path of the store on it)``."""
        if self.is_local:
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem(), self.url
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url, **dict(self.storage_options or {}))
        except ImportError as exc:
            raise _missing_backend(self.url, exc) from None
        except ValueError as exc:  # unknown protocol
            raise UQError(f"{self.url}: {exc}; use a local path or an fsspec URL such as s3://bucket/run.zarr") from None

    def zarr_store(self, read_only: bool = False) -> Any:
        """The Zarr store object: ``LocalStore`` for a path, ``FsspecStore`` for a URL."""
        if self.is_local:
            return zarr.storage.LocalStore(self.url, read_only=read_only)
        try:
            return zarr.storage.FsspecStore.from_url(self.url, storage_options=dict(self.storage_options or {}), read_only=read_only)
        except ImportError as exc:
            raise _missing_backend(self.url, exc) from None
        except ValueError as exc:
            raise UQError(f"{self.url}: {exc}; use a local path or an fsspec URL such as s3://bucket/run.zarr") from None

    def join(self, *parts: str) -> str:
        """Path of ``parts`` under the store, on its filesystem."""
        fs, root = self.fs()
        return "/".join([root.rstrip("/"), *parts]) if not self.is_local else os.path.join(root, *parts)

    # -- small objects -----------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        fs, _ = self.fs()
        target = self.join(*parts)
        with io_errors(self, "read the store"):
            fs.invalidate_cache(target)  # s3fs caches listings: another process may have written since
            return bool(fs.exists(target))

    def read_bytes(self, *parts: str) -> bytes | None:
        """The object's bytes, None when it is absent."""
        fs, _ = self.fs()
        with io_errors(self, f"read {'/'.join(parts)}"):
            try:
                return bytes(fs.cat_file(self.join(*parts)))
            except FileNotFoundError:
                return None

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create the object ``parts`` holding ``data`` if absent: True if this call created it."""
        target = self.join(*parts)
        if self.is_local:
            for _ in range(3):  # the folder may be removed by a releasing writer in between
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
                except FileNotFoundError:
                    continue
                try:
                    with os.fdopen(handle, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.link(tmp, target)  # atomic, fails when the target exists
                    return True
                except FileExistsError:
                    return False
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            raise FileNotFoundError(f"cannot create {target}: its folder keeps disappearing")
        fs, _ = self.fs()
        try:
            fs.pipe_file(target, data, mode="create")
            return True
        except FileExistsError:
            return False

    def write_atomic(self, data: bytes, *parts: str) -> None:
        """Replace the object ``parts`` with ``data`` whole."""
        target = self.join(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
            return
        fs, _ = self.fs()
        fs.pipe_file(target, data)

    def list(self, *parts: str) -> list[str]:
        """Names directly under the folder ``parts`` ([] when absent)."""
        fs, _ = self.fs()
        folder = self.join(*parts)
        fs.invalidate_cache(folder)  # see exists()
        try:
            entries = fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted({str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries})

    def remove(self, *parts: str) -> None:
        """Remove the file or folder ``parts`` (nothing when absent)."""
        fs, _ = self.fs()
        target = self.join(*parts)
        if self.is_local:
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.unlink(target)
            return
        if fs.exists(target):
            fs.rm(target, recursive=True)

    def remove_empty_folder(self, *parts: str) -> None:
        """Remove the folder ``parts`` if it is empty (local disk; object storage has no folders)."""
        if self.is_local:
            with contextlib.suppress(OSError):
                os.rmdir(self.join(*parts))

    def remove_all_but(self, keep: set[str]) -> None:
        """Remove every entry at the store's top level except the names in ``keep``."""
        for name in self.list():
            if name not in keep:
                self.remove(name)

    def is_free(self, ignore: set[str]) -> bool:
        """True when nothing but the names in ``ignore`` is at the location (or nothing at all)."""
        return not [name for name in self.list() if name not in ignore]

    def move_tree(self, source: str, target: str, last: str = "zarr.json") -> None:
        """Move the folder ``source`` to ``target`` (absent): a rename on a local disk; on object
        storage a copy of every object, ``last`` after all the others, then the source's removal
        (``last`` first: the source stops being a group before its objects go)."""
        if self.is_local:
            os.rename(self.join(source), self.join(target))
            return
        fs, _ = self.fs()
        src, dst = self.join(source), self.join(target)
        files = [f for f in fs.find(src) if f != f"{src}/{last}"]
        for f in files:
            fs.copy(f, dst + f[len(src) :])
        if fs.exists(f"{src}/{last}"):
            fs.copy(f"{src}/{last}", f"{dst}/{last}")
            fs.rm(f"{src}/{last}")
        if fs.exists(src):
            fs.rm(src, recursive=True)
