"""prost_tokenizer: TEXT (UTF-8 strings) -> TOKEN_IDS int32 [W] with the CLIP BPE tokenizer of `prost.tokenizer`.

Parameters: MAX_WORDS (W, required, equal to the TOKEN_IDS dims), MAX_TEXT_BYTES (default 4096).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from prost.tokenizer import get_tokenizer, tokenize
from prost_client import protocol as P
from prost_model_repository import param_keys as K
from prost_model_repository.busy import marks_busy
from prost_model_repository.utils import ParameterError, decode_strings, dims, invalid, model_config, parameters
from prost_model_repository.utils import param_int


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.max_words = param_int(params, K.MAX_WORDS, minimum=2)
        self.max_bytes = param_int(params, K.MAX_TEXT_BYTES, 4096, minimum=1)
        if dims(config, P.TOKEN_IDS) != [self.max_words]:
            raise ParameterError(f"MAX_WORDS={self.max_words} but {P.TOKEN_IDS} dims are {dims(config, P.TOKEN_IDS)}")
        get_tokenizer()  # load the BPE vocabulary now, not on the first request

    @marks_busy
    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, P.TEXT).as_numpy()  # [B, 1] bytes
        try:
            texts = decode_strings(raw, P.TEXT)
        except ValueError as exc:
            return invalid(str(exc))
        for i, text in enumerate(texts):
            if not text.strip():
                return invalid(f"{P.TEXT}[{i}] is empty")
            if len(text.encode("utf-8")) > self.max_bytes:
                return invalid(f"{P.TEXT}[{i}] has more than MAX_TEXT_BYTES={self.max_bytes} bytes")
        ids = tokenize(texts, context_length=self.max_words).astype(np.int32, copy=False)  # [B, W]
        return pb_utils.InferenceResponse([pb_utils.Tensor(P.TOKEN_IDS, ids)])
