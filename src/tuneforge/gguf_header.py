"""Read a few metadata values from a GGUF file's header without loading the file.

`tuneforge models` says what each embedded model is (its architecture, whether it has a chat
template) before the model was ever converted, and for Gemma 3 270M before its GGUF was even
assembled from its chunk packages. gguf's own `GGUFReader` needs the whole file (it maps every
tensor) and builds a Python object per vocabulary entry (262k for Gemma); this reads the header as
a stream from any sequence of files (the chunks, in order), keeps only the keys asked for and skips
the rest, so it costs a fraction of a second and never the tensors.

The format: magic `GGUF`, version, tensor count, key/value count, then the key/value pairs
(little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from tuneforge.errors import TuneforgeError

# GGUF value type -> struct format of one scalar (8: string, 9: array are read separately)
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Chained(io.RawIOBase):
    """The files of `paths` read back to back as one stream (a GGUF split into chunks)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")  # noqa: SIM115 (closed at its end)
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class _Header:
    def __init__(self, stream: BinaryIO, where: str) -> None:
        self._stream = stream
        self._where = where

    def read(self, n: int) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise TuneforgeError(f"base_model: {self._where} ends inside its GGUF header")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self.unpack("<Q"))

    def skip(self, n: int) -> None:
        while n > 0:  # read, not seek: a chained stream cannot seek
            n -= len(self.read(min(n, 1 << 20)))

    def value(self, kind: int, keep: bool) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            if keep:
                return self.string()
            return self.skip_string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS and not keep:
                return self.skip(count * struct.calcsize(_SCALARS[item]))
            values = [self.value(item, keep) for _ in range(count)]
            return values if keep else None
        raise TuneforgeError(f"base_model: {self._where}: unknown GGUF value type {kind}")


def read_gguf_metadata(paths: Path | Sequence[Path], keys: Iterable[str]) -> dict[str, Any]:
    """The values of `keys` that the GGUF header holds (a missing key is absent from the result).

    `paths` is one GGUF file or, for a GGUF split into chunks, the chunks in order. Reading stops
    once every key was found."""
    files = [paths] if isinstance(paths, Path) else list(paths)
    wanted = set(keys)
    where = str(files[0]) if len(files) == 1 else f"{files[0]} (and its other chunks)"
    found: dict[str, Any] = {}
    try:
        with io.BufferedReader(_Chained(files), buffer_size=1 << 20) as stream:
            header = _Header(stream, where)
            if header.read(4) != b"GGUF":
                raise TuneforgeError(f"base_model: {where} is not a GGUF file")
            version = header.unpack("<I")
            if version < 2:
                raise TuneforgeError(f"base_model: {where} is GGUF version {version} (< 2)")
            header.unpack("<Q")  # tensor count
            for _ in range(header.unpack("<Q")):
                key = header.string()
                value = header.value(header.unpack("<I"), keep=key in wanted)
                if key in wanted:
                    found[key] = value
                    if wanted <= found.keys():
                        break
    except OSError as e:
        raise TuneforgeError(f"base_model: cannot read {where}: {e.strerror or e}") from None
    return found
