"""ProST export: ONNX graphs, TensorRT engines and Triton model repositories (installed as `prost_export`)."""
