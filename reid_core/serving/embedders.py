"""What turns images into features for search: a model served by Triton (`client.py`) or the
exported ONNX file run in this process by ONNX Runtime (`OnnxEmbedder`), behind one interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reid_core.data.images import decode_resized
from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME, onnx_interface


class ImageEmbedder(ABC):
    """Features of images already resized to the model's `height` × `width` (`embed`), or of
    image files (`embed_files`, decoded and resized as the dataset loader does)."""

    height: int
    width: int

    @abstractmethod
    def embed(self, images: np.ndarray) -> np.ndarray:
        """N×3×H×W RGB 0–255 (any real dtype) → N×D float32 features."""

    def embed_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Decode, resize to the model's input size and embed image files."""
        images = np.stack([decode_resized(Path(p), self.height, self.width) for p in paths])
        return self.embed(images.transpose(0, 3, 1, 2))

    def _checked(self, images: np.ndarray, model: str) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, self.height, self.width):
            raise ValueError(
                f"images must be N×3×{self.height}×{self.width} for model {model}, "
                f"got {images.shape}"
            )
        return images

    def close(self) -> None:  # noqa: B027 - most embedders hold nothing to release
        """Release connections (a no-op where there are none)."""

    def __enter__(self) -> ImageEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnnxEmbedder(ImageEmbedder):
    """An exported model (`reid export`'s interface) run by ONNX Runtime on the CPU, in this
    process: search without a server. Batches of at most `max_batch_size` images."""

    def __init__(self, onnx_path: Path, max_batch_size: int = 64, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.height, self.width, self.dim = onnx_interface(self.path)
        self.max_batch_size = max_batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's choice (the cores)
        # no busy-waiting between requests: its threads would take the cores from the search
        # (faiss's OpenMP threads) that follows each embedding
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = self._checked(images, str(self.path))
        parts = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + self.max_batch_size]})[0]
            for i in range(0, len(images), self.max_batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
