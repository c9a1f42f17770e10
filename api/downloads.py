"""Checkpoint downloads: a tar stream of a whole checkpoint directory, built on the fly in constant memory
(headers computed up front, so Content-Length is exact and clients can show progress)."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 4 * 1024 * 1024  # large reads: the per-chunk overhead, not the disk, bounds a streamed download
BLOCK = 512


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _pad(size: int) -> int:
    return (BLOCK - size % BLOCK) % BLOCK


class TarStream:
    """`files` = (name in archive, path on disk); sizes are read once, up front."""

    def __init__(self, files: list[tuple[str, Path]]):
        self.entries = []
        for name, path in files:
            st = path.stat()
            self.entries.append((_header(name, st.st_size, st.st_mtime), path, st.st_size))
        self.length = sum(len(h) + size + _pad(size) for h, _, size in self.entries) + 2 * BLOCK

    def __iter__(self) -> Iterator[bytes]:
        for header, path, size in self.entries:
            yield header
            fd = os.open(path, os.O_RDONLY)
            try:
                sent = 0
                while sent < size:
                    chunk = os.read(fd, min(CHUNK, size - sent))
                    if not chunk:
                        raise OSError(f"{path} shrank while it was being sent")
                    sent += len(chunk)
                    yield chunk
            finally:
                os.close(fd)
            if _pad(size):
                yield b"\0" * _pad(size)
        yield b"\0" * (2 * BLOCK)
