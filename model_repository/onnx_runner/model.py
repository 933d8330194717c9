"""ONNX Runtime (CPUExecutionProvider) behind a python-backend model: prost_text, prost_video, prost_similarity (cpu).

One source for the three models; the config says which graph and which tensors:
  ONNX_FILE           graph file in the version directory (default "model.onnx")
  INTRA_OP_THREADS    ONNX Runtime intra-op threads (default 0 = ONNX Runtime's choice)
  BETA                the exported beta: the value of the optional BETA input when a request omits it
  MAX_ITEMS           unbatched models: the most items along any input's first dim (default 0 = no limit); larger
                      requests get INVALID_ARGUMENT instead of a similarity matrix that exhausts memory
Batched models (max_batch_size > 0) run every request of a dynamic batch in one ONNX Runtime call, then split.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from prost_client import protocol as P
from prost_model_repository import param_keys as K
from prost_model_repository.busy import marks_busy
from prost_model_repository.utils import ParameterError, internal, invalid, model_config, ort_session, param
from prost_model_repository.utils import param_float, param_int, parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.max_items = param_int(params, K.MAX_ITEMS, 0, minimum=0)
        self.session = ort_session(version_dir(args) / param(params, K.ONNX_FILE, "model.onnx"),
                                   param_int(params, K.INTRA_OP_THREADS, 0))
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        missing = sorted((set(self.inputs) - graph_inputs) | (set(self.outputs) - graph_outputs))
        if missing:
            raise ParameterError(f"tensors {', '.join(missing)} are in the config but not in the ONNX graph")
        self.defaults = {}
        for entry in config["input"]:
            if entry.get("optional"):  # only BETA is optional: a request without it gets the exported beta
                if entry["name"] != P.BETA:
                    raise ParameterError(f"optional input {entry['name']} has no default; only {P.BETA} may be "
                                         f"optional")
                self.defaults[P.BETA] = np.array([param_float(params, P.BETA_PARAM)], np.float32)

    @marks_busy
    def execute(self, requests):
        feeds = [self._feeds(request) for request in requests]
        if self.batched and len(requests) > 1:
            return self._run_batched(feeds)
        return [self._run_one(feed) for feed in feeds]

    def _feeds(self, request):
        feed = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            feed[name] = self.defaults[name] if tensor is None else tensor.as_numpy()
        return feed

    def _run_batched(self, feeds):
        """One ONNX Runtime call over the concatenated requests; on failure, run them one by one to isolate it."""
        sizes = [len(feed[self.inputs[0]]) for feed in feeds]
        merged = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.inputs}
        try:
            results = self.session.run(self.outputs, merged)
        except Exception:  # noqa: BLE001 - fall back to per-request runs so one bad request fails alone
            return [self._run_one(feed) for feed in feeds]
        bounds = np.cumsum([0, *sizes])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(r[a:b]))
                                            for name, r in zip(self.outputs, results)])
                for a, b in zip(bounds[:-1], bounds[1:])]

    def _run_one(self, feed):
        over = [n for n in self.inputs if self.max_items and feed[n].ndim and len(feed[n]) > self.max_items]
        if over:
            return invalid(f"{over[0]} has {len(feed[over[0]])} items; this model takes at most {self.max_items}")
        try:
            results = self.session.run(self.outputs, feed)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime rejects the input (e.g. inconsistent sizes)
            message = str(exc)
            return invalid(message) if "INVALID_ARGUMENT" in message else internal(message)
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, r) for name, r in zip(self.outputs, results)])
