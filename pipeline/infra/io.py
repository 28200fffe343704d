"""Atomic, deterministic file output and checked Parquet input.

Every stage writes through :func:`atomic_path`: the bytes go to a temporary sibling, are
fsynced and renamed into place, so an interrupted stage never leaves a file that Snakemake
or DVC could take for a finished one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.infra import numerics


class InputError(ValueError):
    """An upstream artifact is missing, truncated or has the wrong schema."""


class OutputError(OSError):
    """An output could not be written (disk full, a file-size limit, ...); nothing of it was
    left under its final name, so a rerun with space starts from nothing and gives the same
    bytes."""


# A write that ran out of room: the disk or quota full, a file-size limit, a read-only or
# failing device. pyarrow reports these with the OS's text but without an errno.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}
_NO_ROOM_TEXT = ("No space left on device", "File too large", "Disk quota exceeded")


def _failed_write(path: Path, error: OSError) -> OSError:
    """``error`` as an OutputError naming ``path`` when it is a write that ran out of room;
    any other OSError (a missing input, a lock) unchanged."""
    if isinstance(error, OutputError) or not (
            error.errno in _NO_ROOM or any(t in str(error) for t in _NO_ROOM_TEXT)):
        return error
    reason = error.strerror or str(error)
    return OutputError(error.errno, f"{path}: could not be written ({reason}); nothing of it "
                                    "is left under this name")


class BusyError(OSError):
    """Another process is producing the same output right now."""


LOCK_DIR = Path(".pipeline-locks")  # relative to the working directory (the repo root)


@contextmanager
def output_locks(paths, lock_dir: Path = LOCK_DIR) -> Iterator[None]:
    """Hold an exclusive lock per output for the life of a stage job.

    Snakemake and DVC each lock against themselves, not against each other: a `dvc repro`
    started while `snakemake` runs would write the same files. Each job takes these
    non-blocking flocks first and stops with a clear message if another job holds one;
    the kernel releases them on any exit, SIGKILL included. The lock files live outside the
    outputs (a lock inside a DVC-tracked directory would become part of it).
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    fds = []
    try:
        for path in sorted({str(p) for p in paths}):  # one global order: no deadlock
            name = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:24]
            fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BusyError(
                    f"{path}: another job is producing this output right now (two pipeline "
                    "invocations at once?); nothing was written"
                ) from None
            fds.append(fd)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:  # a full disk, a size limit: named by the output, not the temporary
        named = _failed_write(path, e)
        if named is e:
            raise
        raise named from e
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces directory ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb+") as f:
                os.fsync(f.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        named = _failed_write(path, e)
        if named is e:
            raise
        raise named from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes, read in chunks: the value DVC records for a file (DVC 3 hashes
    raw bytes) and the checksum of the CIFAR archives."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def write_parquet(table: pa.Table, path: str | Path, metadata: dict | None = None) -> None:
    """Write ``table`` atomically; ``metadata`` (JSON-able values) goes to the file's
    key-value metadata, with how the process computed (:func:`numerics.record`: portable
    bytes or bound to a machine). No timestamps are written: equal tables, equal bytes."""
    metadata = {**(metadata or {}), numerics.METADATA_KEY: numerics.record()}
    kv = dict(table.schema.metadata or {})
    kv.update({k.encode(): json.dumps(v, sort_keys=True).encode() for k, v in metadata.items()})
    table = table.replace_schema_metadata(kv)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextmanager
def parquet_errors(path: str | Path) -> Iterator[None]:
    """Reading Parquet at ``path`` inside: a missing file, or pyarrow's error on an
    unreadable or truncated one, becomes an InputError naming the file."""
    if not Path(path).exists():
        raise InputError(f"{path}: missing input file")
    try:
        yield
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: unreadable or truncated Parquet file ({e})") from e


def read_parquet(path: str | Path, columns: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Read a Parquet file, checking it is complete and has ``columns`` with these types."""
    with parquet_errors(path):
        # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset and with it
        # pandas, 0.37 s of every job's start-up for a feature (datasets) never used here.
        table = pq.ParquetFile(path).read()
    check_columns(table.schema, columns or {}, path)
    return table


def check_columns(schema: pa.Schema, columns: dict[str, pa.DataType], path) -> None:
    for name, dtype in columns.items():
        if name not in schema.names:
            raise InputError(f"{path}: missing column {name!r} (has {schema.names})")
        if not schema.field(name).type.equals(dtype):
            raise InputError(
                f"{path}: column {name!r} has type {schema.field(name).type}, expected {dtype}"
            )


def read_metadata(path: str | Path) -> dict:
    """The JSON key-value metadata written by :func:`write_parquet` (pandas' own excluded)."""
    kv = pq.read_schema(path).metadata or {}
    return {k.decode(): json.loads(v) for k, v in kv.items() if k != b"pandas"}


def write_json(obj, path: str | Path, sort_keys: bool = True) -> None:
    """Atomic, NaN-free JSON; ``sort_keys=False`` keeps a deliberate order (e.g. the grid's).
    A dict gets the numerics record (:func:`numerics.record`) under its own key."""
    if isinstance(obj, dict):
        obj = {**obj, numerics.METADATA_KEY: numerics.record()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")
