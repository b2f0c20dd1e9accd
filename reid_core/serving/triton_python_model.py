"""Triton python-backend model: runs the version's model.onnx with ONNX Runtime.

`reid_core.serving.triton` copies this file as `<name>/<version>/model.py` when the repository is
written for the bundled CPU tritonserver, which has the python backend but no onnxruntime one. It
runs inside Triton's stub interpreter, so it imports only numpy, onnxruntime and Triton's own
`triton_python_backend_utils`; never import it from reid_core.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ONNX Runtime session per model instance; a dynamic batch is one session run."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [
            pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            for request in requests
        ]
        batch = np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32)
        features = self.session.run([self.output_name], {self.input_name: batch})[0]
        responses, start = [], 0
        for array in arrays:
            part = features[start : start + len(array)]
            start += len(array)
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(part))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.session = None
