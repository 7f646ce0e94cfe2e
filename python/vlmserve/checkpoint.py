"""Zero-copy access to a Hugging Face safetensors checkpoint.

Files are memory-mapped; a tensor is a numpy view into the map, so handing
it to the native library (which converts it into its own layout) is the only
copy ever made. Only safetensors is read: pickled weights can run code."""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmserve import _native
from vlmserve.errors import ModelLoadError

SAFETENSORS_DTYPES = {
    "F32": (np.float32, _native.DTYPE_F32),
    "F16": (np.float16, _native.DTYPE_F16),
    "BF16": (np.uint16, _native.DTYPE_BF16),  # raw bits; the library widens them
    "I32": (np.int32, _native.DTYPE_I32),
}


@dataclass(frozen=True)
class TensorRef:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int
    end: int


class Checkpoint:
    """All tensors of a checkpoint directory (single file or sharded)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ModelLoadError(f"model directory {self.directory} does not exist")
        files = self._weight_files()
        self._maps: dict[Path, mmap.mmap] = {}
        self._tensors: dict[str, TensorRef] = {}
        for f in files:
            self._index_file(f)

    def _weight_files(self) -> list[Path]:
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ModelLoadError(f"{index} is not a valid safetensors index: {e}") from None
            files = sorted({self.directory / v for v in weight_map.values()})
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ModelLoadError(f"checkpoint shards listed in {index.name} are missing: {missing}")
            return files
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            pickled = sorted(p.name for p in self.directory.glob("*.bin")) + sorted(
                p.name for p in self.directory.glob("*.pt"))
            hint = f" (found {pickled}: only safetensors weights are loaded)" if pickled else ""
            raise ModelLoadError(f"no .safetensors weights in {self.directory}{hint}")
        return files

    def _index_file(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ModelLoadError(f"{path} is truncated (no safetensors header)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len <= 0 or 8 + header_len > size:
                raise ModelLoadError(f"{path} is corrupt: header length {header_len} exceeds the file size {size}")
            try:
                header = json.loads(fh.read(header_len))
            except ValueError as e:
                raise ModelLoadError(f"{path} is corrupt: unreadable safetensors header ({e})") from None
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        self._maps[path] = mapped
        data_start = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                begin, end = (data_start + int(o) for o in info["data_offsets"])
                ref = TensorRef(name, info["dtype"], tuple(int(d) for d in info["shape"]), path, begin, end)
            except (KeyError, TypeError, ValueError):
                raise ModelLoadError(f"{path} is corrupt: bad header entry for tensor {name!r}") from None
            if end > size or begin > end:
                raise ModelLoadError(f"{path} is truncated: tensor {name!r} ends at byte {end} of {size}")
            self._tensors[name] = ref

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def ref(self, name: str) -> TensorRef:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelLoadError(f"tensor {name!r} is missing from the checkpoint in {self.directory}") from None

    def array(self, name: str) -> np.ndarray:
        """A read-only numpy view of the tensor inside the memory map."""
        ref = self.ref(name)
        if ref.dtype not in SAFETENSORS_DTYPES:
            raise ModelLoadError(f"tensor {name!r} has unsupported dtype {ref.dtype}")
        np_dtype = np.dtype(SAFETENSORS_DTYPES[ref.dtype][0])
        count = int(np.prod(ref.shape)) if ref.shape else 1
        if count * np_dtype.itemsize != ref.end - ref.begin:
            raise ModelLoadError(f"tensor {name!r}: shape {ref.shape} of {ref.dtype} does not match its "
                                 f"{ref.end - ref.begin} bytes")
        return np.frombuffer(self._maps[ref.file], dtype=np_dtype, count=count, offset=ref.begin).reshape(ref.shape)

    def native_dtype(self, name: str) -> int:
        return SAFETENSORS_DTYPES[self.ref(name).dtype][1]

    def close(self) -> None:
        """Unmaps the files; a map still viewed by a live array stays until that array is gone."""
        for m in self._maps.values():
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass
        self._maps.clear()
