"""Filesystem helpers that keep user data safe: atomic output directories and file writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from recap_core.errors import OutputExistsError, RecapError


def check_output(out: Path, overwrite: bool, *, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an existing output without --overwrite, and an output that is one of the inputs."""
    out = Path(out)
    for src in inputs:
        if out.resolve() == Path(src).resolve():
            raise RecapError(
                f"output {out} is the same as the input {src}",
                fix="choose a different output directory (the input is never modified)",
            )
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists", fix="choose a new path or pass --overwrite")


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, *, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out` in one rename.

    On an exception the temporary directory is removed and `out` is left as it was.
    """
    out = Path(out)
    check_output(out, overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    # mkdtemp makes the directory private (0700); the output is an ordinary directory.
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        _fsync_dir_tree(tmp)
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary sibling + fsync + rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


def link_or_copy(src: Path, dst: Path) -> None:
    """Hardlink `src` to `dst` (costs no disk); copy when linking is not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
