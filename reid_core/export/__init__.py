"""Export for serving: ONNX (and TensorRT on a GPU) with a parity gate."""
