"""The data root as the browser sees it: listing, volume previews, path checks, uploads.

Every path a client names goes through `security.confine` first, so nothing here can
read or write outside the data root. What the filesystem still refuses (a missing file,
a permission, a full disk) is an `ApiError` saying so (`os_errors`), never a 500.
Filesystem work runs in a thread (a listing on a network share, a thumbnail of a big
TIFF) so the event loop keeps serving others.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from backend.errors import ApiError, bad_request, not_found
from backend.security import (
    MalformedPath,
    PathError,
    confine,
    relative_to_root,
    sanitize_filename,
)

# What a browser may put into the data root: volumes and configs, nothing executable.
VOLUME_SUFFIXES = (".h5", ".hdf5", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_ENTRIES = 5_000
_PARTIAL_PREFIX = ".upload-"


def forbidden(exc: PathError) -> ApiError:
    if isinstance(exc, MalformedPath):
        return bad_path(str(exc))
    return ApiError(403, "outside_data_root", f"{exc}; paths must stay inside the data root")


def bad_path(message: str, **details: Any) -> ApiError:
    return ApiError(400, "bad_path", message, details)


def resolve(root: Path, path: str) -> Path:
    try:
        return confine(root, path)
    except PathError as exc:
        raise forbidden(exc) from None


def os_error(exc: OSError, path: str) -> ApiError:
    """What the client is told when the filesystem refuses `path`: never a 500."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return not_found(f"'{path}' does not exist in the data root", path=path)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ApiError(
            403,
            "permission_denied",
            f"the server may not use '{path}' ({reason}); change its permissions or pick "
            "another path",
            {"path": path},
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, "no_space", f"no space left for '{path}'; free some space", {})
    return bad_path(f"'{path}' cannot be used ({reason}); pick another path", path=path)


@contextlib.contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn an OSError while working on the client's `path` into its `ApiError`."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, path) from None


# --- reading ---------------------------------------------------------------------------


def list_dir(root: Path, rel: str) -> dict[str, Any]:
    """One folder of the data root: folders first, then files, by name; no hidden files."""
    with os_errors(rel):
        return _list_dir(root, rel)


def _list_dir(root: Path, rel: str) -> dict[str, Any]:
    folder = resolve(root, rel)
    if not folder.is_dir():
        raise not_found(f"'{rel}' is not a folder in the data root", path=rel)
    entries: list[dict[str, Any]] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            item = _entry(root, folder, entry)
            if item is not None:
                entries.append(item)
    entries.sort(key=lambda e: (e["kind"] != "dir", e["name"].lower()))
    return {
        "path": relative_to_root(root, folder),
        "parent": None if folder == root.resolve() else relative_to_root(root, folder.parent),
        "entries": entries[:MAX_ENTRIES],
        "truncated": len(entries) > MAX_ENTRIES,
    }


def _entry(root: Path, folder: Path, entry: os.DirEntry[str]) -> dict[str, Any] | None:
    try:
        if entry.is_symlink():
            confine(root, folder / entry.name)  # listed only when it points inside the root
        is_dir = entry.is_dir()
        size = None if is_dir else entry.stat().st_size
    except (PathError, OSError):
        return None
    base = relative_to_root(root, folder)
    return {
        "name": entry.name,
        "path": f"{base}/{entry.name}" if base else entry.name,
        "kind": "dir" if is_dir else "file",
        "size": size,
        "volume": not is_dir and entry.name.lower().endswith(VOLUME_SUFFIXES),
    }


def volume_path(root: Path, rel: str) -> tuple[Path, str | None]:
    """A confined volume path; `file.h5:dataset` and PNG globs are volumes too."""
    from backend.volumes import is_glob, split_dataset

    path_text, dataset = split_dataset(rel)
    path = resolve(root, str(path_text))
    if is_glob(path):
        for match in glob.glob(str(path)):
            resolve(root, match)  # a symlinked slice must not lead out either
    elif not path.exists():
        raise not_found(f"'{rel}' does not exist in the data root", path=rel)
    return path, dataset


def file_info(root: Path, rel: str) -> dict[str, Any]:
    from backend.volumes import VolumeError, volume_info

    try:
        with os_errors(rel):
            path, dataset = volume_path(root, rel)
            info = volume_info(path, dataset)
    except VolumeError as exc:
        raise ApiError(422, "invalid_volume", str(exc), {"path": rel}) from None
    return {
        "path": rel,
        "shape": list(info.shape),
        "dtype": info.dtype,
        "format": info.format,
        "size_bytes": info.size_bytes,
    }


def thumbnail(root: Path, rel: str, z: int | None, size: int) -> bytes:
    from backend.volumes import VolumeError, thumbnail_png

    try:
        with os_errors(rel):
            path, dataset = volume_path(root, rel)
            return thumbnail_png(path, z, max_size=size, dataset=dataset)
    except VolumeError as exc:
        raise ApiError(422, "invalid_volume", str(exc), {"path": rel}) from None


def check_path(root: Path, text: str) -> dict[str, Any]:
    """Whether a folder exists, is writable, or could be created (an output path, say)."""
    with os_errors(text):
        return _check_path(root, text)


def _check_path(root: Path, text: str) -> dict[str, Any]:
    path = resolve(root, text)
    answer: dict[str, Any] = {"path": str(path), "exists": path.exists()}
    if path.exists():
        writable = path.is_dir() and os.access(path, os.W_OK | os.X_OK)
        message = "ready" if writable else "exists but is not a writable folder"
        answer.update(writable=writable, creatable=False, message=message)
        return answer
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    creatable = parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    message = "will be created" if creatable else f"cannot be created: {parent} is not writable"
    answer.update(writable=False, creatable=creatable, message=message)
    return answer


async def in_thread(func: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


# --- uploads ---------------------------------------------------------------------------


class _Upload:
    """Streams one multipart `file` part straight into a hidden file in the target folder."""

    def __init__(self, folder: Path, max_volume: int, max_yaml: int) -> None:
        self.folder = folder
        self.max_volume = max_volume
        self.max_yaml = max_yaml
        self.name: str | None = None
        self.partial: Path | None = None
        self.size = 0
        self.limit = 0
        self._fd: int | None = None
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._in_file = False
        self.done = False

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file" or b"filename" not in options:
            return  # other form fields are ignored
        if self.partial is not None:
            raise bad_request("send one file per upload")
        name = sanitize_filename(options[b"filename"].decode("utf-8", "replace"))
        suffix = Path(name).suffix.lower()
        if suffix in YAML_SUFFIXES:
            self.limit = self.max_yaml
        elif suffix in VOLUME_SUFFIXES:
            self.limit = self.max_volume
        else:
            allowed = ", ".join(VOLUME_SUFFIXES + YAML_SUFFIXES)
            raise ApiError(
                415, "unsupported_type", f"'{name}' cannot be uploaded; allowed: {allowed}"
            )
        self.name = name
        self.partial = self.folder / f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}.partial"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(self.partial, flags, 0o644)
        self._in_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file or self._fd is None:
            return
        self.size += end - start
        if self.size > self.limit:
            raise too_large(self.limit)
        os.write(self._fd, data[start:end])

    def _part_end(self) -> None:
        if self._in_file and self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._in_file = False
            self.done = True

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.partial is not None:
            with contextlib.suppress(OSError):
                self.partial.unlink()

    def publish(self) -> Path:
        """Give the finished file its name; never overwrite: `name-1.ext`, `name-2.ext`..."""
        assert self.partial is not None and self.name is not None
        stem, suffix = Path(self.name).stem, Path(self.name).suffix
        for n in range(1000):
            target = self.folder / (self.name if n == 0 else f"{stem}-{n}{suffix}")
            try:
                os.link(self.partial, target)  # fails if the name is taken: no race
            except FileExistsError:
                continue
            except OSError:  # a filesystem without hard links
                if target.exists():
                    continue
                os.replace(self.partial, target)
                return target
            self.partial.unlink()
            return target
        raise ApiError(409, "exists", f"too many files named like '{self.name}'")


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the upload is over the limit of {limit:,} bytes; copy big volumes into the data "
        "root directly",
        {"limit": limit},
    )


async def save_upload(
    request: Request, root: Path, rel_dir: str, max_volume: int, max_yaml: int
) -> str:
    """Store the request's multipart `file` in `rel_dir`; returns its path in the root."""
    folder = resolve(root, rel_dir)
    with os_errors(rel_dir):
        is_folder = folder.is_dir()
    if not is_folder:
        raise not_found(f"'{rel_dir}' is not a folder in the data root", path=rel_dir)
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise bad_request("send the file as multipart/form-data in a field named 'file'")
    total_limit = max(max_volume, max_yaml) + 64 * 1024  # headers and boundaries
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > total_limit:
        raise too_large(max(max_volume, max_yaml))
    upload = _Upload(folder, max_volume, max_yaml)
    parser = MultipartParser(boundary, upload.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > total_limit:
                raise too_large(max(max_volume, max_yaml))
            parser.write(chunk)
        parser.finalize()
        if not upload.done:
            raise bad_request("no complete file part named 'file' in the upload")
        target = upload.publish()
    except ClientDisconnect:
        upload.discard()
        raise
    except ApiError:
        upload.discard()
        raise
    except OSError as exc:  # the disk is full, the folder went away...
        upload.discard()
        raise os_error(exc, rel_dir) from None
    except Exception as exc:  # the multipart parser's errors: a malformed body
        upload.discard()
        raise bad_request(f"malformed multipart body: {exc}") from None
    return relative_to_root(root, target)
