"""Opening data files: decompressed by suffix, decoded as text without a byte order mark.

``.gz``, ``.bz2`` and ``.xz`` are decompressed as they are read; a ``.zip`` must hold one file.
The format is named by the suffix before the compression suffix (``ratings.csv.gz`` is a CSV).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

_COMPRESSED = (".gz", ".bz2", ".xz", ".zip")
_PARQUET = (".parquet", ".pq")
# What a corrupt or truncated compressed stream (or a failing disk) raises while it is read.
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)


def error(path: Path | str, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def check_file(path: Path) -> None:
    if not path.is_file():
        raise error(path, "no such file")


def _format_suffix(path: Path) -> str:
    """The suffix that names the format: the one before a compression suffix (``r.csv.gz``
    -> ``.csv``)."""
    name = path.name.lower()
    for c in _COMPRESSED:
        if name.endswith(c):
            return Path(name[: -len(c)]).suffix
    return Path(name).suffix


def is_parquet(path: Path) -> bool:
    return _format_suffix(path) in _PARQUET


def _zip_member(path: Path) -> BinaryIO:
    with zipfile.ZipFile(path) as zf:
        # macOS archivers add resource forks under __MACOSX/: they are not data
        files = [m.filename for m in zf.infolist()
                 if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if len(files) != 1:
            listed = ", ".join(files[:10]) + (", ..." if len(files) > 10 else "")
            raise error(path, f"a .zip must hold exactly one file, it holds {len(files)}"
                               + (f": {listed}" if files else ""))
        return zf.open(files[0])  # the member stays readable after the archive is closed


def _open_raw(path: Path) -> BinaryIO:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zip":
        return _zip_member(path)
    return open(path, "rb")


@contextmanager
def open_binary(path: str | Path) -> Iterator[BinaryIO]:
    """Open a data file for reading bytes, decompressing by suffix.

    ``.gz``, ``.bz2`` and ``.xz`` are decompressed as they are read; a ``.zip`` must hold exactly
    one file (``__MACOSX/`` entries aside), which is read.

    Parameters
    ----------
    path : the file.

    Yields
    ------
    BinaryIO
        The (decompressed) bytes.

    Raises
    ------
    ValueError
        Naming the file: it is missing, cannot be opened, is a zip of several files, or its
        compressed data is corrupt or truncated (also when that shows up while the caller
        reads).
    """
    path = Path(path)
    check_file(path)
    try:
        f = _open_raw(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise error(path, f"cannot open: {e}") from None
    with f:
        try:
            yield f
        except _READ_ERRORS as e:
            what = "compressed data" if path.suffix.lower() in _COMPRESSED else "the file"
            raise error(path, f"cannot read {what}: {e}") from None


@contextmanager
def open_text(path: str | Path, encoding: str = "utf-8-sig") -> Iterator[TextIO]:
    """:func:`open_binary` decoded as text (undecodable bytes replaced, a leading BOM dropped,
    universal newlines).

    Parameters
    ----------
    path : the file.
    encoding : the text encoding; the default drops a UTF-8 byte order mark.

    Yields
    ------
    TextIO
    """
    with open_binary(path) as raw:
        yield io.TextIOWrapper(raw, encoding=encoding, errors="replace")


def parquet_source(path: Path) -> str | io.BytesIO:
    """Something Parquet can seek in: the path, or the decompressed bytes in memory."""
    if path.suffix.lower() not in _COMPRESSED:
        return str(path)
    with open_binary(path) as f:
        return io.BytesIO(f.read())
