"""`LocalAssetStorage`: generated images and sidecars in a directory on local disk."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO, ClassVar, Final

from pydantic import Field

from prefect_evolink.blocks._meta import logo_url, reference_url
from prefect_evolink.blocks.keys import check_prefix
from prefect_evolink.blocks.storage import AssetStorage, StoredObject

__all__ = ["LocalAssetStorage"]

logger = logging.getLogger(__name__)

_COPY_BUFFER: Final = 1024 * 1024
_LOCK_FIRST_WAIT: Final = 0.001
_LOCK_LONGEST_WAIT: Final = 0.02
"""How often a waiting `file_lock` tries again: after 1 ms, doubling up to every 20 ms."""


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort, since some file systems refuse to fsync directories."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalAssetStorage(AssetStorage):
    """Store generated images and sidecars in a directory on local disk.

    Writes are atomic: data goes to a hidden temp file in the destination directory, is
    fsynced, then moved into place with `os.replace`, so a reader never sees half an image.
    Per-object metadata is not kept on disk; write a JSON sidecar with `put_json` instead.
    `presigned_url` is always None: EvoLink cannot fetch a local file.

    Attributes:
        base_dir: Directory that holds all assets; relative paths resolve against the working
            directory at the time of use, and '~' is expanded.

    Example:
        Load a saved block in a flow or task:
        ```python
        from prefect_evolink.blocks import LocalAssetStorage

        storage = LocalAssetStorage.load("BLOCK_NAME")
        ```

        Save one (or create it in the Prefect UI), then store and read from async code:
        ```python
        from pathlib import Path
        from prefect_evolink.blocks import LocalAssetStorage, safe_key

        LocalAssetStorage(base_dir="/data/evolink-assets").save("local-assets")

        storage = await LocalAssetStorage.aload("local-assets")
        stored = await storage.aput_file(
            safe_key("summer", "asset-1", "draft", "0.png"),
            Path("/tmp/image.png"),
            content_type="image/png",
            metadata={"prompt": "a red kite"},
        )
        record = await storage.aget_json("summer/asset-1/record.json")
        ```
        Sync code calls the same methods without the `a` (`storage.put_file(...)`).
    """

    _block_type_name: ClassVar[str | None] = "EvoLink Local Asset Storage"
    _block_type_slug: ClassVar[str | None] = "evolink-local-asset-storage"
    _description: ClassVar[str | None] = (
        "Stores EvoLink GPT Image 2 results and their JSON sidecars in a directory on local "
        "disk, with atomic writes."
    )
    _logo_url = logo_url("evolink-local-asset-storage")  # type: ignore[assignment]
    _documentation_url = reference_url(  # type: ignore[assignment]
        "prefect_evolink.blocks.local.LocalAssetStorage"
    )

    base_dir: str = Field(
        default="assets",
        min_length=1,
        title="Base Directory",
        description=(
            "Directory that holds all assets. A relative path is resolved against the working "
            "directory of the process at the time of use; '~' is expanded."
        ),
    )

    # -- paths

    def root(self) -> Path:
        """The absolute, symlink-resolved base directory (resolved per call: cwd may change)."""
        return Path(self.base_dir).expanduser().resolve()

    def _path(self, key: str) -> Path:
        """Validated key -> absolute path, refusing anything that resolves outside `root()`.

        Resolving follows symlinks, so a link inside the base directory that points elsewhere
        is refused as well.
        """
        self._check_key(key)
        root = self.root()
        path = (root / key).resolve()
        if path == root or not path.is_relative_to(root):
            raise ValueError(f"invalid storage key {key!r}: it resolves outside {root}")
        return path

    # -- writes

    def _write_atomically(self, key: str, fill: Callable[[BinaryIO], object]) -> tuple[Path, int]:
        """Create a temp file next to the destination, let `fill(fileobj)` write it, then replace.

        Returns the final path and the number of bytes written.
        """
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".partial")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
                size = os.fstat(out.fileno()).st_size
            # mkstemp creates 0600; assets are meant to be readable like any other output file.
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)
        return dest, size

    def _put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Copy `path` into the store in 1 MiB chunks, atomically. `metadata` is not kept."""
        with path.open("rb") as source:  # open first: a missing source leaves no temp file
            dest, size = self._write_atomically(
                key, lambda out: shutil.copyfileobj(source, out, _COPY_BUFFER)
            )
        logger.debug("stored %s (%d bytes) at %s", key, size, dest)
        return StoredObject(key=key, uri=dest.as_uri(), size_bytes=size, content_type=content_type)

    def _put_bytes(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None
    ) -> StoredObject:
        """Write `data` atomically. `metadata` is not kept (use a JSON sidecar)."""
        dest, size = self._write_atomically(key, lambda out: out.write(data))
        return StoredObject(key=key, uri=dest.as_uri(), size_bytes=size, content_type=content_type)

    # -- reads

    def _get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _list_keys(self, prefix: str) -> list[str]:
        """Regular files under the base directory whose key starts with `prefix`.

        Hidden entries (names starting with '.', such as in-progress temp files) are skipped,
        and symlinks are not followed out of the tree.
        """
        check_prefix(prefix)
        root = self.root()
        # Walk only the deepest directory the prefix names completely.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(directory) if directory else root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for current, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                full = Path(current) / name
                if full.is_symlink() or not full.is_file():
                    continue
                key = full.relative_to(root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    # -- locks

    @asynccontextmanager
    async def file_lock(self, key: str, *, timeout_seconds: float) -> AsyncIterator[None]:
        """Hold an exclusive OS lock (`fcntl.flock`) on the file `key` for the body.

        Every process whose storage resolves to the same directory (on this machine, or on a
        file system that supports `flock` across machines) takes turns on it; so do two opens
        in one process. The file is created empty when missing and never deleted; the kernel
        drops the lock when its holder exits, so a killed process never leaves it held. The
        wait never blocks the event loop: a non-blocking attempt, then another after 1 ms,
        doubling up to every 20 ms. POSIX only (`fcntl`).

        Raises:
            TimeoutError: Not held within `timeout_seconds`.
        """
        import fcntl  # POSIX only: imported where it is used

        path = self._path(key)
        # Opening a local file does not wait on anything worth a thread.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout_seconds
            wait = _LOCK_FIRST_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"{key} stayed locked by another holder for {timeout_seconds:g} s"
                        ) from None
                    await asyncio.sleep(min(wait, left))
                    wait = min(wait * 2, _LOCK_LONGEST_WAIT)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """Local files have no shareable URL: always None (after validating the key)."""
        self._path(key)
        return None
