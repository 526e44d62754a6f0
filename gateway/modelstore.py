"""Model stores: where bundles are published and where gateways fetch them.

One interface, three places: a local folder (``file:///dir``), an Object Storage bucket through
the ``oci`` SDK (``oci://<namespace>/<bucket>/<prefix>``), and a pre-authenticated request URL
read with plain HTTPS and no credentials (``https://…/p/<token>/n/<ns>/b/<bucket>/o/<prefix>/``).
A bundle lives at ``<prefix>/<version>/model.onnx`` and ``<prefix>/<version>/manifest.json``;
``<prefix>/LATEST`` holds the version to serve and is written last. Every call blocks: the
gateway calls them from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, ModelError

__all__ = [
    "LATEST",
    "Latest",
    "ModelStore",
    "NotFound",
    "StoreError",
    "VersionExists",
    "check_name",
    "open_store",
    "version_key",
]

LATEST = "LATEST"
CHUNK = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")  # a version or file name: one path segment, as manifests


class StoreError(ModelError):
    """The store could not be read or written (network, 5xx, auth); the text says what."""


class NotFound(StoreError):
    """The object does not exist."""


class VersionExists(StoreError):
    """A write that must not overwrite found the object already there."""


class _Stale(Exception):
    """A resumed download was refused (the object changed, or the range is past its end)."""


@dataclass(frozen=True)
class Latest:
    """What ``LATEST`` names, and its opaque ETag for the next conditional read."""

    version: str
    etag: str


class ModelStore(Protocol):
    """Where bundles live; see the module docstring for the layout."""

    url: str  # for logs and reports; PAR tokens redacted

    def latest(self, etag: str | None = None) -> Latest | None:
        """``LATEST`` in one small conditional request; None when unchanged since ``etag``."""
        ...

    def download(self, version: str, name: str, dest: Path, *, size: int | None = None) -> None:
        """One file of a version into ``dest``, via ``dest.part``; resumes a broken try."""
        ...

    def read(self, version: str, name: str) -> bytes:
        """A small file of a version (manifest.json), whole."""
        ...

    def put(self, version: str, name: str, data: bytes | Path, *, overwrite: bool = False) -> None:
        """Write one file of a version; never over an existing one unless ``overwrite``."""
        ...

    def set_latest(self, version: str) -> None:
        """Point ``LATEST`` at ``version``."""
        ...

    def versions(self) -> list[str]:
        """The versions present (a listing: publisher side), in ``version_key`` order."""
        ...


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing the numbers inside versions as numbers: 1.9 < 1.10 < 2.0."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", version)
        if part
    )


def check_name(value: str, what: str = "version") -> str:
    """``value`` if it is one safe path segment (letters, digits, ``._+-``), else StoreError."""
    if not _NAME.match(value) or value in (".", ".."):
        raise StoreError(f"{what} {value[:80]!r} is not a valid name (letters, digits, . _ + -)")
    return value


@dataclass
class _Body:
    """An open object body: where it starts in the object, its ETag and full size."""

    start: int
    etag: str
    total: int | None
    chunks: Iterator[bytes]
    close: Callable[[], None]


class _Store:
    """What every store shares: names, and the resumable download."""

    url: str

    def _rel(self, version: str, name: str) -> str:
        return f"{check_name(version)}/{check_name(name, 'file name')}"

    def _open(self, rel: str, start: int, if_match: str | None) -> _Body:
        raise NotImplementedError

    def download(self, version: str, name: str, dest: Path, *, size: int | None = None) -> None:
        """One file of a version into ``dest``, via ``dest.part``; resumes a broken try."""
        rel = self._rel(version, name)
        part = dest.with_name(dest.name + ".part")
        tag = dest.with_name(dest.name + ".part.etag")  # the ETag the .part was started from
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            have = part.stat().st_size if part.exists() else 0
            etag = tag.read_text().strip() if have and tag.exists() else ""
        except OSError as exc:
            raise StoreError(f"cannot use {part}: {exc.strerror}") from exc
        start = have if size is None or have < size else 0
        try:
            body = self._open(rel, start, etag if start and etag else None)
        except _Stale:  # the object changed since the .part began, or it is shorter: start over
            start, body = 0, self._open_fresh(rel)
        try:
            if body.start != start:  # the server ignored the Range
                start = 0
            if size is not None and body.total is not None and body.total != size:
                _discard(part, tag)
                raise StoreError(
                    f"{self.url}/{rel}: size mismatch (expected {size}, the store has {body.total})"
                )
            written = self._write(body, part, tag, start, size, rel)
        finally:
            body.close()
        if size is not None and written != size:
            _discard(part, tag)
            raise StoreError(f"{self.url}/{rel}: size mismatch (expected {size}, got {written})")
        if body.total is not None and written != body.total:
            raise StoreError(
                f"{self.url}/{rel}: transfer ended at {written} of {body.total} bytes "
                "(the next try resumes from there)"
            )
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise StoreError(f"cannot move {part} to {dest}: {exc.strerror}") from exc
        tag.unlink(missing_ok=True)

    def _open_fresh(self, rel: str) -> _Body:
        try:
            return self._open(rel, 0, None)
        except _Stale as exc:
            raise StoreError(f"{self.url}/{rel}: the store refused a plain read") from exc

    def _write(
        self, body: _Body, part: Path, tag: Path, start: int, size: int | None, rel: str
    ) -> int:
        written = start
        try:
            if start == 0:
                _discard(tag)
                if body.etag:
                    tag.write_text(body.etag)
            with part.open("ab" if start else "wb") as fh:
                for chunk in body.chunks:
                    written += len(chunk)
                    if size is not None and written > size:
                        break
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write {part}: {exc.strerror}") from exc
        if size is not None and written > size:
            _discard(part, tag)
            raise StoreError(f"{self.url}/{rel}: size mismatch (expected {size}, got more)")
        return written


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _copy_in(data: bytes | Path, fh: IO[bytes]) -> None:
    if isinstance(data, Path):
        with data.open("rb") as src:
            shutil.copyfileobj(src, fh, CHUNK)
    else:
        fh.write(data)


class FileStore(_Store):
    """A local or mounted folder: ``file:///srv/models/site1``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def latest(self, etag: str | None = None) -> Latest | None:
        """``LATEST`` in one small read; None when unchanged since ``etag``."""
        data = self._read(LATEST)
        tag = hashlib.sha256(data).hexdigest()[:16]
        if etag == tag:
            return None
        return Latest(_parse_latest(data, self.url), tag)

    def read(self, version: str, name: str) -> bytes:
        """A small file of a version, whole."""
        return self._read(self._rel(version, name))

    def _read(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{self.url}/{rel} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {self.url}/{rel}: {exc.strerror}") from exc

    def _open(self, rel: str, start: int, if_match: str | None) -> _Body:
        try:
            fh = (self.root / rel).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"{self.url}/{rel} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {self.url}/{rel}: {exc.strerror}") from exc
        st = os.fstat(fh.fileno())
        etag = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
        if (if_match is not None and if_match != etag) or (start and start >= st.st_size):
            fh.close()
            raise _Stale
        fh.seek(start)
        return _Body(start, etag, st.st_size, iter(lambda: fh.read(CHUNK), b""), fh.close)

    def put(self, version: str, name: str, data: bytes | Path, *, overwrite: bool = False) -> None:
        """Write through a temporary file; without ``overwrite`` a hard link makes it
        appear only if nothing is there (VersionExists otherwise)."""
        self._put(self._rel(version, name), data, overwrite=overwrite)

    def set_latest(self, version: str) -> None:
        """Replace ``LATEST`` atomically."""
        self._put(LATEST, check_name(version).encode() + b"\n", overwrite=True)

    def _put(self, rel: str, data: bytes | Path, *, overwrite: bool) -> None:
        target = self.root / rel
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                _copy_in(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, target)
            else:
                os.link(tmp, target)  # fails if the target exists, unlike rename
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except FileExistsError as exc:
            raise VersionExists(f"{self.url}/{rel} already exists") from exc
        except OSError as exc:
            raise StoreError(f"cannot write {self.url}/{rel}: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def versions(self) -> list[str]:
        """The version folders present, in ``version_key`` order."""
        try:
            found = [p.name for p in self.root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self.url}: {exc.strerror}") from exc
        return sorted(
            (v for v in found if _NAME.match(v) and not v.startswith(".")), key=version_key
        )


def _parse_latest(data: bytes, where: str) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        raise StoreError(f"{where}/{LATEST} is empty")
    return check_name(text, f"{where}/{LATEST} holds")


def open_store(
    url: str,
    *,
    oci_config: Path = Path("~/.oci/config"),
    oci_profile: str = "DEFAULT",
    auth: str = "api_key",
    endpoint: str = "",
    timeout: float = 30.0,
) -> ModelStore:
    """The store a URL names: ``file:///abs/dir``, ``oci://ns/bucket/prefix`` or an
    ``https://`` PAR URL. ConfigError if the URL or the OCI configuration is wrong."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ConfigError(
                f"model source {url!r}: a file URL needs an absolute path, file:///dir"
            )
        return FileStore(Path(path.rstrip("/") or "/"))
    if parts.scheme == "oci":
        from .ocistore import open_oci_store

        return open_oci_store(
            url,
            oci_config=oci_config,
            oci_profile=oci_profile,
            auth=auth,
            endpoint=endpoint,
            timeout=timeout,
        )
    if parts.scheme in ("https", "http"):
        from .ocistore import ParStore

        return ParStore(url, timeout=timeout)
    raise ConfigError(
        f"model source {url.split('?')[0][:60]!r}: must start with file://, oci:// or https://"
    )
