"""prost_gallery: scores text prototypes against the gallery stored in this version directory."""

from prost_model_repository.gallery.impl import TritonPythonModel  # noqa: F401
