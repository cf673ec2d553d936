"""The safetensors format, read memory-mapped and written streamed: the one place both our checkpoints and
Hugging Face's files go through.

Layout: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}, "__metadata__"},
padded with spaces to a multiple of 8, then the raw little-endian bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class WeightsError(ValueError):
    """Weights that cannot be read: the message names the file, the tensor and the fix."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


# safetensors dtype -> NumPy little-endian dtype. BF16 is read as its 16 raw bits (see _as_float32).
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


class SafetensorsFile:
    """Read-only, memory-mapped view of a .safetensors file: keys, metadata, and arrays without copies.

    The file is validated by the `safetensors` package (header, offsets, file fully covered, so a truncated
    file fails here); tensors are then views into one np.memmap of the data section, so a reader that
    converts them (transpose, dtype) makes the only copy. `safe_open(...).get_tensor` would materialise
    an extra copy of every tensor first.
    """

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open
        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                self.keys = list(handle.keys())
                self.metadata = dict(handle.metadata() or {})
        except Exception as error:  # safetensors raises its own SafetensorError (an Exception subclass)
            raise WeightsError(f"{self.path} is not a readable safetensors file ({_first_line(error)}"
                               f"{_truncated_tensor(self.path)}); it is truncated or corrupt: download or save "
                               f"it again") from error
        with open(self.path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            self._header = json.loads(handle.read(header_size))
        self._data_start = 8 + header_size
        self._data = None
        if self.path.stat().st_size > self._data_start:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._header[key]["shape"])

    def dtype(self, key: str) -> str:
        return self._header[key]["dtype"]

    def array(self, key: str) -> np.ndarray:
        """The tensor as a read-only view into the memory map (no copy); BF16 comes back as float32."""
        info = self._header[key]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise WeightsError(f"{self.path}: tensor {key} has dtype {info['dtype']}, which this loader does not "
                               f"read; convert the file to float32")
        begin, end = info["data_offsets"]
        raw = self._data[begin:end] if self._data is not None else np.empty(0, np.uint8)
        array = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            # bfloat16 is the top half of a float32: shift the 16 bits up.
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def close(self):
        self._data = None  # drops the memmap; the OS unmaps when no view refers to it

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _truncated_tensor(path: Path) -> str:
    """', tensor X ends at byte N but the file holds only M' when the header is intact and the data short."""
    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size > path.stat().st_size:
                return ""
            header = json.loads(handle.read(header_size))
        data_size = path.stat().st_size - 8 - header_size
        ends = sorted((info["data_offsets"][1], key) for key, info in header.items() if key != "__metadata__")
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return ""
    for end, key in ends:
        if end > data_size:
            return f"; tensor {key} ends at data byte {end} but the file holds only {data_size} data bytes"
    return ""


_DTYPE_NAMES = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
                np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
                np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}


def write_safetensors(file: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write `tensors` in the safetensors format, one tensor at a time.

    Layout: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}, "__metadata__"},
    padded with spaces to a multiple of 8, then the raw little-endian bytes. safetensors.numpy.save_file
    would first build every tensor's bytes in memory (a second copy of the whole model).
    """
    header, offset = {}, 0
    for name, array in tensors.items():
        dtype = np.dtype(array.dtype).newbyteorder("=")
        if dtype not in _DTYPE_NAMES:
            raise WeightsError(f"cannot store tensor {name} of dtype {array.dtype} in safetensors; "
                                  f"use a float or integer dtype")
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = {str(key): str(value) for key, value in metadata.items()}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(file, "wb") as handle:
        handle.write(len(header_bytes).to_bytes(8, "little"))
        handle.write(header_bytes)
        for array in tensors.values():
            little = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
            handle.write(memoryview(little.reshape(-1)).cast("B") if little.size else b"")
        handle.flush()
        os.fsync(handle.fileno())


def read_safetensors(file: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file; each tensor an owned, writable array."""
    if not file.is_file():
        raise FileNotFoundError(f"missing {file}: the checkpoint is incomplete; save it again")
    with SafetensorsFile(file) as source:
        tensors = {key: np.array(source.array(key)) for key in source.keys}
        return tensors, source.metadata
