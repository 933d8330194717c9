"""The `prost` command and `make demo`: they sit above every stage (prost, prost_export, prost_model_repository,
prost_client), which never import them."""
