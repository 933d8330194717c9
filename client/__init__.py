"""Torch-free gRPC client for a ProST Triton deployment (installed as `prost_client`)."""
