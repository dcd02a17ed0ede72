"""User-facing errors: one clear line, a non-zero exit, no traceback."""
from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable, Collection
from typing import TypeVar

log = logging.getLogger("nmt")
T = TypeVar("T")


class UserError(Exception):
    """Bad input or an impossible request; the message names the file or key."""


def check_choice(choices: Collection[str], key: str, name: str) -> None:
    """A UserError naming `key` and the choices unless `name` is one of them."""
    if name not in choices:
        raise UserError(f"{key}: unknown value {name!r}; choose one of {', '.join(choices)}")


def lookup(registry: dict[str, T], key: str, name: str) -> T:
    """registry[name]; an unknown name is check_choice's UserError, the same line the
    params schema gives (never a silent default)."""
    check_choice(registry, key, name)
    return registry[name]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main_entry(fn: Callable[[], None]) -> Callable[[], None]:
    """Wrap a stage's main(): user errors become one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper() -> None:
        setup_logging()
        try:
            fn()
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                where = e.filename or "the output folder"
                print(f"error: no space left on device while writing {where}", file=sys.stderr)
            elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                print(f"error: cannot write {e.filename or '?'}: {e.strerror}", file=sys.stderr)
            elif e.errno == errno.ENOENT:
                print(f"error: file not found: {e.filename}", file=sys.stderr)
            else:
                raise
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
