"""Serving: predict, the Ray Serve app and its web page, ONNX export and the model card."""
