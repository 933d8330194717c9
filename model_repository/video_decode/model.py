"""prost_video_decode: VIDEO (the bytes of an encoded video file) -> FRAMES float32 [L, 3, S, S].

Frames are sampled and preprocessed by `prost.data.video.decode_video`, exactly as in training and evaluation.
Parameters (all required; `prost repository build` writes them):
  NUM_FRAMES, IMAGE_SIZE   L and S, equal to the FRAMES dims
  SAMPLE_FPS               the export config's `sample_fps` ("none": every frame), so serving samples as training did
  MAX_VIDEO_BYTES          larger inputs are refused before decoding
  MAX_SOURCE_FRAMES        a clip whose container lists more frames is refused before decoding (bounds the work)
A video that is refused or cannot be decoded fails its own request with INVALID_ARGUMENT; the other requests of the
batch succeed.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from prost.data.video import decode_video
from prost.errors import DataError
from prost_client import protocol as P
from prost_model_repository import param_keys as K
from prost_model_repository.busy import marks_busy
from prost_model_repository.utils import ParameterError, dims, internal, invalid, model_config, param_int, parameters
from prost_model_repository.utils import param_optional_float


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.num_frames = param_int(params, K.NUM_FRAMES, minimum=1)
        self.image_size = param_int(params, K.IMAGE_SIZE, minimum=1)
        self.max_bytes = param_int(params, K.MAX_VIDEO_BYTES, minimum=1)
        self.max_source_frames = param_int(params, K.MAX_SOURCE_FRAMES, minimum=1)
        self.sample_fps = param_optional_float(params, K.SAMPLE_FPS, minimum=0.0)
        expected = [self.num_frames, 3, self.image_size, self.image_size]
        if dims(config, P.FRAMES) != expected:
            raise ParameterError(f"NUM_FRAMES/IMAGE_SIZE give {expected} but {P.FRAMES} dims are "
                                 f"{dims(config, P.FRAMES)}")
        self.logger = pb_utils.Logger

    @marks_busy
    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        videos = pb_utils.get_input_tensor_by_name(request, P.VIDEO).as_numpy().reshape(-1)  # [B] bytes
        frames = np.empty((len(videos), self.num_frames, 3, self.image_size, self.image_size), np.float32)
        for i, data in enumerate(videos):
            if not isinstance(data, bytes) or not data:
                return invalid(f"{P.VIDEO}[{i}] is empty")
            if len(data) > self.max_bytes:
                return invalid(f"{P.VIDEO}[{i}] has {len(data)} bytes, more than MAX_VIDEO_BYTES={self.max_bytes}")
            try:
                frames[i] = decode_video(data, self.num_frames, self.image_size, sample_fps=self.sample_fps,
                                         max_source_frames=self.max_source_frames).frames
            except DataError as exc:
                return invalid(f"{P.VIDEO}[{i}]: {exc}")
            except Exception as exc:  # noqa: BLE001 - one undecodable upload must not take the instance down
                self.logger.log_error(f"prost_video_decode: unexpected {type(exc).__name__} on {P.VIDEO}[{i}]: {exc}")
                return internal(f"{P.VIDEO}[{i}]: unexpected {type(exc).__name__}: {exc}")
        return pb_utils.InferenceResponse([pb_utils.Tensor(P.FRAMES, frames)])
