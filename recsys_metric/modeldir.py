"""A model directory on disk: what may be replaced, how it is replaced, and its manifest.

The rules (a user's files are sacred):

- ``--out`` may name a new path, an empty directory or a model directory this package wrote
  (:func:`check_target`); anything else is refused before any work, naming the path.
- The new model is written to a hidden sibling directory, its ``manifest.json`` last, then
  swapped into place in one ``renameat2(RENAME_EXCHANGE)``: at every instant the path holds the
  old model or the new one, whole, even under ``kill -9``. Where the kernel or filesystem lacks
  the exchange, two renames with a rollback (a crash between them leaves the old model beside the
  path, under its hidden name).
- Saves to one path serialise on a lock of the parent directory; a save that finds the path
  changed since it began (another save won) fails with a clear error and leaves nothing behind.
- Hidden directories left by a killed save are removed by the next save to that path (only
  those of dead processes, holding only model files).
- :func:`verify` checks a directory against its manifest (every file's size and SHA-256) before
  anything in it is parsed; :func:`check_annoy_file` checks an Annoy file's structure, so a
  damaged index is an error instead of a segfault.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
MARKER = "recsys-metric model"  # the manifest's "format": what makes a directory ours
FORMAT_VERSION = 2
# Every file a model directory may hold; a directory with anything else is not replaced.
MODEL_FILES = frozenset({MANIFEST, "config.json", "model.npz", "item_names.json", "items.ann"})
REQUIRED = frozenset({"config.json", "model.npz", "item_names.json"})
_TMP = re.compile(r"^\.(?P<name>.+)\.saving-(?P<pid>\d+)-[0-9a-f]{8}$")


# --------------------------------------------------------------------------- what may be replaced


def _entries(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def read_json(path: Path, kind: type):
    """A JSON file's value, which must be a ``kind``; ``ValueError`` naming the file when it is
    missing, unreadable or of another type."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing") from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise ValueError(f"{path}: damaged: {e}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _format_of(path: Path) -> object:
    """The ``"format"`` of a JSON object file; None when there is none to read."""
    try:
        return read_json(path, dict).get("format")
    except ValueError:
        return None


def _manifest_marked(path: Path) -> bool:
    return _format_of(path / MANIFEST) == MARKER


def _legacy_model(path: Path) -> bool:
    """A directory saved before manifests (format 1): config.json with ``"format": 1``."""
    return _format_of(path / "config.json") == 1 and (path / "model.npz").is_file()


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory this package wrote, holding nothing else."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    names = _entries(path)
    if not set(names) <= MODEL_FILES or not all((path / n).is_file() for n in names):
        return False
    return _manifest_marked(path) or _legacy_model(path)


def resolve_target(path: str | Path) -> Path:
    """The absolute path a save to ``path`` writes (symlinks followed, ``..`` resolved)."""
    if str(path).strip() == "":
        raise ValueError("the model path is empty: give a directory to write the model to")
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_target(path: str | Path) -> Path:
    """Refuse, before any work, a ``path`` that a save would have to destroy; returns it resolved.

    Accepted: a path that does not exist (its parents are created), an empty directory, or a
    model directory written by this package (replaced whole). Raises ``ValueError`` naming the
    path otherwise: a file, a directory holding anything else, the working directory or one of
    its parents, or a place that cannot be written.
    """
    target = resolve_target(path)
    shown = f"{path} ({target})" if str(target) != os.path.abspath(str(path)) else str(path)
    if target.parent == target:
        raise ValueError(f"{shown}: cannot write a model over the root directory")
    cwd = Path(os.getcwd()).resolve()
    if target == cwd or target in cwd.parents:
        raise ValueError(f"{shown}: is the working directory or holds it; give a new or empty "
                         "directory for the model")
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ValueError(f"{shown}: exists and is not a directory; refusing to replace it "
                             "(give a new or empty directory, or a model directory)")
        names = _entries(target)
        if names and not is_model_dir(target):
            others = [n for n in names if n not in MODEL_FILES] or names
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ValueError(f"{shown}: is a directory that is not a recsys-metric model "
                             f"(it holds {listed}); refusing to replace it: give a new or "
                             "empty directory, or a model directory to overwrite")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{shown}: {ancestor} is a file, so the model directory cannot be "
                         "created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{shown}: cannot write in {ancestor} (permission denied)")
    return target


# --------------------------------------------------------------------------- the swap


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the kernel, libc or filesystem lacks it."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), ctypes.c_uint(flags)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _exchange(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` (the new model) and ``target`` (the old one) so that ``target`` is never
    missing; afterwards ``tmp`` holds the old model."""
    if _renameat2(tmp, target, RENAME_EXCHANGE):
        return
    aside = tmp.with_name(tmp.name + ".old")  # fallback: two renames, rolled back on failure
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    os.rename(aside, tmp)


def _remove_model_files(path: Path) -> None:
    """Remove a directory holding model files only; a stranger file keeps it (and itself)."""
    try:
        names = _entries(path)
    except FileNotFoundError:
        return
    for name in names:
        if name in MODEL_FILES or name.startswith(".tmp-"):
            (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Hidden directories a killed save to ``target`` left behind (its pid no longer runs)."""
    for entry in target.parent.iterdir():
        m = _TMP.match(entry.name.removesuffix(".old"))
        if (m and m["name"] == target.name and entry.is_dir() and not entry.is_symlink()
                and not _pid_alive(int(m["pid"]))):
            _remove_model_files(entry)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` (no lock file, so no debris); best effort on
    filesystems that refuse it."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a model directory at ``path`` with ``write(tmp)``, atomically, replacing a previous
    model directory whole. ``write`` fills the empty directory ``tmp``; the manifest must be its
    last file. Returns the resolved path.

    Raises ``ValueError`` when ``path`` may not be replaced (:func:`check_target`) or changed
    while this save was writing (another save to it finished first); nothing is left behind.
    """
    target = check_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    seen = _identity(target)
    while True:  # mkdir applies the umask, where mkdtemp would make it 0700
        tmp = target.parent / f".{target.name}.saving-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        for name in _entries(tmp):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        with _locked(target.parent):
            if _identity(target) != seen:
                raise ValueError(f"{path}: changed while this model was being saved (another "
                                 "save to the same path finished first); this model was not "
                                 "saved")
            check_target(target)  # still ours to replace
            if seen is None:
                if not _renameat2(tmp, target, RENAME_NOREPLACE):
                    os.rename(tmp, target)
            else:
                _exchange(tmp, target)
            _fsync_dir(target.parent)
    except BaseException:
        _remove_model_files(tmp)
        raise
    _remove_model_files(tmp)  # now the old model (or the empty directory that was there)
    return target


# --------------------------------------------------------------------------- the manifest


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, info: dict) -> None:
    """``manifest.json``: the marker, format and ``info``, plus every other file's size and
    SHA-256. Written last, through a rename, so a manifest is always whole."""
    files = {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256(directory / name)}
             for name in _entries(directory) if name != MANIFEST}
    meta = {"format": MARKER, "format_version": FORMAT_VERSION, **info, "files": files}
    part = directory / ".tmp-manifest"
    part.write_text(json.dumps(meta, indent=2))
    os.replace(part, directory / MANIFEST)


def verify(path: str | Path, hashes: bool = True) -> dict:
    """Check a model directory against its manifest before anything in it is parsed: every
    listed file's size and (with ``hashes``) SHA-256. Returns the manifest; ``ValueError``
    naming the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such model directory" if not path.exists()
                         else f"{path}: not a directory (a model is a directory)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        if _legacy_model(path):
            raise ValueError(f"{path}: saved by recsys-metric 0.1.0 without a manifest (format 1)"
                             "; train it again to use it with this version")
        raise ValueError(f"{path}: not a recsys-metric model directory (no {MANIFEST})")
    meta = read_json(mpath, dict)
    if meta.get("format") != MARKER:
        raise ValueError(f"{mpath}: not a recsys-metric manifest")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{mpath}: model format {meta.get('format_version')!r} is not "
                         f"supported (this version reads format {FORMAT_VERSION})")
    files = meta.get("files")
    listed = set(files) if isinstance(files, dict) else set()
    if not REQUIRED <= listed:
        raise ValueError(f"{mpath}: damaged: its file list lacks "
                         f"{', '.join(sorted(REQUIRED - listed))}")
    for name, want in files.items():
        f = path / str(name)
        if name not in MODEL_FILES or name == MANIFEST:
            raise ValueError(f"{mpath}: damaged: lists an unexpected file {name!r}")
        if not isinstance(want, dict) or not isinstance(want.get("bytes"), int) \
                or not isinstance(want.get("sha256"), str):
            raise ValueError(f"{mpath}: damaged: bad entry for {name}")
        if not f.is_file():
            raise ValueError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise ValueError(f"{f}: {size} bytes where the manifest says {want['bytes']}: "
                             "damaged or replaced")
        if hashes and sha256(f) != want["sha256"]:
            raise ValueError(f"{f}: SHA-256 differs from the manifest: damaged or replaced")
    return meta


# --------------------------------------------------------------------------- the Annoy file


def annoy_node_bytes(dim: int) -> int:
    """Bytes of one node of an Annoy euclidean index: n_descendants, a, children[2], v[dim]."""
    return 16 + 4 * dim


def check_annoy_file(path: Path, dim: int, item_vectors: np.ndarray, n_trees: int) -> None:
    """Check that ``path`` is the euclidean Annoy forest of ``n_trees`` trees over
    ``item_vectors`` ([n_items, dim]),
    walking its structure as Annoy's search does, so that loading and querying it can neither
    crash nor return another model's items. ``ValueError`` naming the file otherwise."""
    n_items = len(item_vectors)
    node = annoy_node_bytes(dim)
    size = path.stat().st_size
    if size == 0 or size % node:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dim}-dimensional "
                         "Annoy nodes: damaged, or an index of another model")
    n_nodes = size // node
    if n_nodes <= n_items:
        raise ValueError(f"{path}: {n_nodes} nodes for {n_items} items: damaged or truncated")
    words = np.memmap(path, dtype=np.int32, mode="r").reshape(n_nodes, node // 4)
    nd, children = words[:, 0], words[:, 2:]
    k_max = node // 4 - 2  # ids a leaf bucket holds in place of the split plane
    # Annoy's load: the roots are the run of nodes at the end with the same descendant count,
    # which is the number of items
    if nd[-1] != n_items:
        raise ValueError(f"{path}: indexes {nd[-1]} items where the model has {n_items}: "
                         "damaged, or an index of another model")
    run = int(np.argmax(nd[::-1] != n_items)) if (nd != n_items).any() else n_nodes
    # (the last tree's root precedes the copies of all roots that end the file: Annoy drops it)
    roots = run - int(run > 1 and children[-1, 0] == children[n_nodes - run, 0])
    if roots != n_trees and n_items > k_max:  # (a catalogue in one bucket: roots all alike)
        raise ValueError(f"{path}: holds {roots} trees where the model has {n_trees}: "
                         "damaged or truncated")
    if (nd < 1).any() or (nd[:n_items] != 1).any():
        raise ValueError(f"{path}: damaged (bad node counts)")
    vectors = words[:n_items, 4:].view(np.float32)
    if not np.array_equal(vectors, np.asarray(item_vectors, dtype=np.float32)):
        raise ValueError(f"{path}: its item vectors differ from the model's: an index of "
                         "another model, or damaged")
    inner = np.arange(n_items, n_nodes)
    bucket = inner[nd[inner] <= k_max]
    split = inner[nd[inner] > k_max]
    cols = np.arange(k_max)
    held = np.where(cols < nd[bucket, None], children[bucket], 0)
    if ((held < 0) | (held >= n_items)).any():
        raise ValueError(f"{path}: damaged (a leaf bucket points outside the items)")
    kids = children[split, :2]
    # built bottom-up, so a split node's children come before it: no cycle can be walked
    if ((kids < 0) | (kids >= split[:, None])).any():
        raise ValueError(f"{path}: damaged (a tree node points outside the tree)")
