"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a full disk or a kill leaves either the old file or the new one, never
half of one. The file is fsynced before the rename and its folder after it, so
the rename itself survives a power loss. Temporary names start with '.tmp-'
(folders being replaced: '.old-'); a kill can leave them behind, and each stage
sweeps its outputs' leftovers when it starts (`sweep_leftovers`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{path.name}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    except OSError as e:
        raise _naming(e, str(path.parent / prefix), path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _naming(e, tmp, path) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


LINES_PER_WRITE = 1 << 16


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Each line and a newline, written a block of lines at a time: a file of millions of
    lines never exists as one string in memory."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for i in range(0, len(lines), LINES_PER_WRITE):
            f.write("".join(line + "\n" for line in lines[i:i + LINES_PER_WRITE]))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{path.name}."
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    except OSError as e:
        raise _naming(e, str(path.parent / prefix), path) from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if path.exists():
            old = path.with_name(f".old-{path.name}.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _naming(e, str(tmp), path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames in `folder` durable: a rename is an entry of its folder, not of the file."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_leftovers(*outputs: str | os.PathLike) -> list[Path]:
    """Remove what a killed write left of these outputs: '.tmp-NAME.*' and '.old-NAME.*' beside
    each, and any '.tmp-*' or '.old-*' inside an output folder. Returns what was removed."""
    removed = []
    for out in map(Path, outputs):
        if out.parent.is_dir():
            removed += [p for p in out.parent.iterdir()
                        if p.name.startswith((f".tmp-{out.name}.", f".old-{out.name}."))]
        if out.is_dir():
            removed += [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


def sha256_file(path: str | os.PathLike, start: int = 0) -> str:
    """Hex sha256 of a file's bytes from offset `start` on, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_WRITE_FAILED = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _naming(e: OSError, tmp: str, target: Path) -> OSError:
    """`e` naming the target where it named the temporary file, or named nothing on a failed
    write (a full disk): the user's error line shows the output, not a '.tmp-' name."""
    if e.filename is None:
        if e.errno not in _WRITE_FAILED:
            return e
        rest = ""
    elif str(e.filename).startswith(tmp):
        rest = str(e.filename)[len(tmp):]
    else:
        return e
    return OSError(e.errno, e.strerror, str(target) + (rest if rest.startswith(os.sep) else ""))


def read_json(path: str | os.PathLike, rerun: str) -> Any:
    """A JSON file another stage wrote; missing or damaged is a UserError telling to rerun `rerun`."""
    from .errors import UserError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the {rerun} stage first") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: damaged, not valid JSON ({e}); rerun the {rerun} stage") from None


def read_utf8_lines(path: str | os.PathLike, what: str = "") -> list[str]:
    """Read a text file as UTF-8 lines (no line ends); name the file on bad bytes."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what + ': ' if what else ''}file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: not valid UTF-8 (line {line_no}, byte {e.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
