"""Embedding images through a Triton server, over HTTP or gRPC (tritonclient)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME
from reid_core.serving.embedders import ImageEmbedder

if TYPE_CHECKING:
    from reid_core.config import TritonConfig

Protocol = Literal["http", "grpc"]


def local_url(triton: TritonConfig, protocol: Protocol = "http") -> str:
    """host:port of the local server the `triton` section describes, for `protocol`."""
    port = triton.http_port if protocol == "http" else triton.grpc_port
    return f"127.0.0.1:{port}"


class TritonEmbedder(ImageEmbedder):
    """Features of images from a model served by Triton, in chunks of its max batch size.

    The model's config tells the input size; callers pass images already resized to it
    (`embed`) or files (`embed_files`, which decodes and resizes them as the dataset loader
    does). An empty `version` asks Triton for its newest ready version.
    """

    @classmethod
    def from_config(
        cls,
        triton: TritonConfig,
        model: str,
        url: str | None = None,
        protocol: Protocol = "http",
    ) -> TritonEmbedder:
        """A client of the local server the `triton` section describes (127.0.0.1 on its
        port for `protocol`), or of `url` when given."""
        return cls(url or local_url(triton, protocol), model, protocol)

    def __init__(
        self, url: str, model: str, protocol: Protocol = "http", version: str = ""
    ) -> None:
        if protocol == "http":
            import tritonclient.http as client_module
        elif protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
        self._module = client_module
        self.protocol, self.model, self.version = protocol, model, version
        self.client = client_module.InferenceServerClient(url)
        try:
            if protocol == "grpc":
                config = self.client.get_model_config(model, version, as_json=True)["config"]
            else:
                config = self.client.get_model_config(model, version)
        except Exception as err:  # tritonclient raises its own, gevent's and socket errors
            self.client.close()
            raise ConnectionError(
                f"cannot get model {model!r} from Triton at {url} over {protocol}: {err}"
            ) from None
        (dims,) = [list(map(int, i["dims"])) for i in config["input"] if i["name"] == INPUT_NAME]
        self.height, self.width = dims[1], dims[2]
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1
        self.served_version = ""  # the version that answered the last request

    def embed(self, images: np.ndarray) -> np.ndarray:
        """N×3×H×W RGB 0–255 (any real dtype) → N×D float32 features."""
        images = self._checked(images, self.model)
        parts = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start : start + self.max_batch_size]
            tensor = self._module.InferInput(INPUT_NAME, list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk)
            output = self._module.InferRequestedOutput(OUTPUT_NAME)
            result = self.client.infer(
                self.model, [tensor], model_version=self.version, outputs=[output]
            )
            parts.append(result.as_numpy(OUTPUT_NAME))
            response = result.get_response(as_json=True) if self.protocol == "grpc" else None
            self.served_version = (response or result.get_response())["model_version"]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self.client.close()
