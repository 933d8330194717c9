"""What the python-backend models need from their environment, checked when a model loads."""

from __future__ import annotations


def numpy_problem(version: str) -> str | None:
    """Why this numpy cannot serve, or None: Triton 2.51's python backend exchanges BYTES (string) tensors through
    numpy 1's object arrays, which numpy 2 changed, so every text and video request would break."""
    if int(version.split(".")[0]) >= 2:
        return (f"numpy {version} is installed where the python backend runs; Triton's python backend needs numpy<2 "
                f"for its string tensors: install numpy==1.26.4 (pyproject.toml pins it)")
    return None
