"""Names of the config `parameters` that the repository writer sets and the python backends read (server-side only;
the keys clients read, BETA_PARAM, VIDEO_ENCODER_PARAM and REPOSITORY_ID_PARAM, are in `prost_client.protocol`)."""

ONNX_FILE = "ONNX_FILE"  # onnx_runner: graph file in the version directory
INTRA_OP_THREADS = "INTRA_OP_THREADS"  # onnx_runner, gallery: ORT intra-op and gallery engine threads (0: defaults)
MAX_ITEMS = "MAX_ITEMS"  # onnx_runner, unbatched: the most items along any input's first dim (0 = no limit)
MAX_WORDS = "MAX_WORDS"  # tokenizer: token ids per text (W)
MAX_TEXT_BYTES = "MAX_TEXT_BYTES"  # tokenizer: longest accepted TEXT item
NUM_FRAMES = "NUM_FRAMES"  # video_decode: frames per clip (L)
IMAGE_SIZE = "IMAGE_SIZE"  # video_decode: frame side in pixels
SAMPLE_FPS = "SAMPLE_FPS"  # video_decode: sampling rate, or "none" for every frame
MAX_VIDEO_BYTES = "MAX_VIDEO_BYTES"  # video_decode: larger VIDEO items are refused before decoding
MAX_SOURCE_FRAMES = "MAX_SOURCE_FRAMES"  # video_decode: clips listing more frames are refused before decoding
DEFAULT_TOP_K = "DEFAULT_TOP_K"  # gallery: results when a request has no TOP_K
MAX_TOP_K = "MAX_TOP_K"  # gallery: largest accepted TOP_K
BLOCK_ELEMENTS = "BLOCK_ELEMENTS"  # gallery: elements of one scoring block (bounds its memory)
