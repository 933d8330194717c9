"""Error tree shared by prost/ and export/: the CLI prints these as one line and exits non-zero."""


class ProstError(Exception):
    """Base of every error this project raises on purpose."""


class PathError(ProstError):
    """An input or output path cannot be used (missing, a file where a folder is needed, not writable)."""


class ConfigError(ProstError):
    """A configuration value or preset is invalid."""


class CheckpointError(ProstError):
    """A checkpoint cannot be read or does not fit the model."""


class DataError(ProstError):
    """A video or dataset file cannot be used."""


class ExportError(ProstError):
    """An ONNX graph or engine could not be produced."""


class ParityError(ExportError):
    """An exported graph does not compute what the PyTorch model computes."""


class DependencyError(ProstError):
    """An optional package or hardware is missing; the message names the extra to install."""


class RepositoryError(ProstError):
    """A Triton model repository cannot be built or served."""


class TrainingError(ProstError):
    """Training cannot go on (e.g. the loss diverged to NaN or infinity)."""


class GalleryError(ProstError):
    """A gallery version cannot be built or loaded (a missing, truncated or mismatched file, which it names)."""
