"""Writing files so that readers never see half of one: a temporary file in the same folder, renamed over the target.
The one writer every stage uses for sidecars, engines, configs and reports; and the staging folder every stage
writes its model files in until their checks pass (`staging`, `move_into_place`). Reading the files a user names
(`open_user_file`, `read_user_file`, `check_user_file`): regular files only, so that a FIFO or a device is one line,
not a hang or a read until memory runs out."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vitexport.errors import ExportError, VitExportError

STAGING_PREFIX = ".staging-"  # .staging-<pid>-...: the pid tells a dead writer's leftovers from a live one's


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` atomically; the temporary file is removed whatever happens, Ctrl-C included."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result is as readable as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def left_by_a_dead_process(pid: str) -> bool:
    """Whether a file or folder named with its writer's pid was left by a process that no longer runs (killed before
    it could clean up): the pid text is a number and /proc has no such process."""
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


def remove_dead_staging(folder: Path) -> None:
    """Remove staging folders of writers that died mid-write (SIGKILL, power): their pid is in the name and gone.
    A live writer's folder (another command running now) is left alone."""
    for staged in folder.glob(f"{STAGING_PREFIX}*"):
        if left_by_a_dead_process(staged.name.removeprefix(STAGING_PREFIX).split("-", 1)[0]):
            shutil.rmtree(staged, ignore_errors=True)


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """Where a stage writes `target` until its checks pass: the same name in a hidden `.staging-<pid>-<name>.*` folder
    beside it. The same name, because companions refer to it (an ONNX graph names its external data file, an
    OpenVINO .xml its .bin); the same file system, so `move_into_place` is a rename. The folder is removed whatever
    happens (Ctrl-C, a failed check), and those of writers that died are removed on the way in."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(target.parent)
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{target.name}.", dir=target.parent))
    except OSError as e:
        raise ExportError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    try:
        yield folder / target.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def move_into_place(staged: Path, target: Path) -> None:
    """Rename every file staged beside `staged` into `target`'s folder, then `staged` itself to `target`: the model
    file last, so that it never appears before its companions."""
    for companion in sorted(staged.parent.iterdir()):
        if companion != staged:
            os.replace(companion, target.parent / companion.name)
    os.replace(staged, target)


def writable_folder(folder: str | Path, what: str) -> Path:
    """`folder`, created if need be, refused in one line unless this user can write files in it: checked before a
    long run (a benchmark), not after it, when its results would be lost."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise VitExportError(f"cannot write {what} to {folder}: {e.strerror or e}") from None
    return folder


# What a path that is not a regular file is, for the one line that refuses it.
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def _refuse_unless_regular(mode: int, path: str | Path, what: str, error: type[VitExportError]) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        raise error(f"{what} {path} is {kind}: only regular files are read")


def check_user_file(path: str | Path, what: str, *, error: type[VitExportError] = VitExportError) -> os.stat_result:
    """Refuse in one line a path a user named that is missing or not a regular file (its links followed), before a
    library opens it by name (torch, ONNX, ONNX Runtime): a FIFO's open blocks until a writer comes, for ever, and
    /dev/zero never ends."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    _refuse_unless_regular(st.st_mode, path, what, error)
    return st


@contextlib.contextmanager
def open_user_file(path: str | Path, what: str, *, error: type[VitExportError] = VitExportError) -> Iterator[BinaryIO]:
    """A file a user named, opened for reading if it is a regular file. Opened non-blocking, so that a FIFO's open
    returns at once, and checked on the open descriptor itself: nothing can be swapped in between the check and
    the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode, path, what, error)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_user_file(path: str | Path, what: str, *, limit: int, error: type[VitExportError] = VitExportError) -> bytes:
    """The bytes of a regular file a user named, refused in one line past `limit` bytes (at most `limit` + 1 are
    read, whatever the file claims)."""
    with open_user_file(path, what, error=error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is over {_size(limit)}: not the file meant?")
    return data


def read_user_text(path: str | Path, what: str, *, limit: int, error: type[VitExportError] = VitExportError) -> str:
    """`read_user_file` as UTF-8 text; bytes that are not UTF-8 are one line too."""
    try:
        return read_user_file(path, what, limit=limit, error=error).decode()
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def _size(limit: int) -> str:
    return f"{limit >> 20} MB" if limit >= 1 << 20 else f"{limit} bytes"
