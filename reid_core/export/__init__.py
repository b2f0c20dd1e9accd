"""Export for serving: ONNX with a parity gate, Triton model repositories."""
