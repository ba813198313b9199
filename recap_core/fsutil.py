"""Filesystem helpers that keep user data safe: atomic output directories and file writes."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from recap_core.errors import OutputExistsError, RecapError


def check_output(out: Path, overwrite: bool, *, inputs: tuple[Path, ...] = ()) -> None:
    """The one output-safety rule, checked before any work starts (with or without --overwrite).

    Refused: an output that is an input, lies inside an input (it would write into it) or contains
    an input (--overwrite would delete it); an output whose parent is a file or cannot be written;
    an existing output without --overwrite.
    """
    out = Path(out)
    target = out.resolve()
    for src in inputs:
        source = Path(src).resolve()
        if target == source:
            raise RecapError(f"output {out} is the same as the input {src}",
                             fix="choose a different output path (the input is never modified)")
        if source in target.parents:
            raise RecapError(f"output {out} lies inside the input {src}: writing it would change the input",
                             fix=f"choose an output outside {src}")
        if target in source.parents:
            raise RecapError(f"output {out} contains the input {src}: replacing it would delete the input",
                             fix=f"choose an output that does not contain {src}, e.g. a sibling directory")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise RecapError(f"cannot write output {out}: {parent} is a file, not a directory",
                         fix="choose an output path whose parent is a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise RecapError(f"cannot write output {out}: the directory {parent} is not writable",
                         fix="choose a writable location or fix its permissions")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists", fix="choose a new path or pass --overwrite")


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary siblings (`.NAME.tmp-PID-*`, `.NAME.old-PID`) that a killed writer of
    `out` left behind; those of a process still running are kept. Returns what was removed."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = path.name[len(out.name) + len(kind) + 3:].split("-")[0]
            if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, *, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out` in one rename.

    On an exception the temporary directory is removed and `out` is left as it was.
    """
    out = Path(out)
    check_output(out, overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
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
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the output is an ordinary file.
        os.fchmod(fd, 0o666 & ~_umask())
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
