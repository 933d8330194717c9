"""ProST export: ONNX graphs, parity gates, TensorRT engines and the export manifest (installed as `prost_export`)."""
