"""prost_gallery implementation (installed with prost-serve; the version directory holds a tiny model.py)."""
