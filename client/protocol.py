"""The wire contract of the ProST Triton deployment: model, tensor and config-parameter names and gRPC headers.

Dependency-free: the client and every server-side module import these names from here and nowhere else.
"""

# Composing models.
TOKENIZER_MODEL = "prost_tokenizer"
TEXT_MODEL = "prost_text"
VIDEO_MODEL = "prost_video"
SIMILARITY_MODEL = "prost_similarity"
VIDEO_DECODE_MODEL = "prost_video_decode"
GALLERY_MODEL = "prost_gallery"

# Ensembles.
TEXT_SEARCH_MODEL = "prost_text_search"
ENCODE_TEXT_MODEL = "prost_encode_text"  # TEXT -> PHRASE_PROTOTYPES, SENTENCE_EMBEDDING
ENCODE_VIDEO_MODEL = "prost_encode_video"  # VIDEO -> OBJECT_PROTOTYPES, EVENT_PROTOTYPES
SCORE_MODEL = "prost_score"  # TEXT [T], VIDEO [V] -> SIMILARITY [T, V] in one call; its parameters hold BETA

# Graph tensors: identical in ONNX, TensorRT and config.pbtxt.
FRAMES = "FRAMES"  # float32 [B, L, 3, H, W], CLIP-normalised
TOKEN_IDS = "TOKEN_IDS"  # int32 [B, W]
OBJECT_PROTOTYPES = "OBJECT_PROTOTYPES"  # float32 [B, L, No, D], L2-normalised
EVENT_PROTOTYPES = "EVENT_PROTOTYPES"  # float32 [B, Ne, D], L2-normalised
PHRASE_PROTOTYPES = "PHRASE_PROTOTYPES"  # float32 [B, Np, D], L2-normalised
SENTENCE_EMBEDDING = "SENTENCE_EMBEDDING"  # float32 [B, D], L2-normalised
SIMILARITY = "SIMILARITY"  # float32 [T, V]: S_ES + BETA * S_OP
S_ES = "S_ES"  # float32 [T, V]: event-sentence similarity
S_OP = "S_OP"  # float32 [T, V]: object-phrase similarity
BETA = "BETA"  # float32 [1]

# Ensemble inputs and outputs.
TEXT = "TEXT"  # TYPE_STRING [1] per request item
TOP_K = "TOP_K"  # int32 [1], optional, default DEFAULT_TOP_K
VIDEO = "VIDEO"  # TYPE_STRING [1]: the bytes of an encoded video file
VIDEO_IDS = "VIDEO_IDS"  # TYPE_STRING [K]
SCORES = "SCORES"  # float32 [K]
MATCHED_FRAMES = "MATCHED_FRAMES"  # int32 [K, Np]: best frame of each phrase prototype in each result

DEFAULT_TOP_K = 10

# Config parameters that clients read (string values in config.pbtxt `parameters`).
# The exported beta, as a Python float literal, on every model that combines S_es and S_op: prost_similarity (cpu
# variant: the default of its optional BETA input), prost_gallery, and prost_score (the value clients send).
BETA_PARAM = "BETA"
# prost_video and prost_gallery, and the stamp in every gallery file: the sha256 of the video encoder's ONNX graph.
# A gallery loads only under the encoder that produced it.
VIDEO_ENCODER_PARAM = "VIDEO_ENCODER_SHA256"

# prost_gallery: the id of the repository it was built into (its manifest.json "id"), so a client publishing into a
# local repository can check that the server serves that repository.
REPOSITORY_ID_PARAM = "REPOSITORY_ID"

# Header of the restricted model-repository protocol; the server runs with
# --grpc-restricted-protocol=model-repository:<REPOSITORY_KEY_HEADER>=<key> (Triton prefixes gRPC headers).
REPOSITORY_KEY_HEADER = "prost-repository-key"
# Header of the optional inference key (`prost serve --inference-key`), restricting the inference and health
# protocols the same way.
INFERENCE_KEY_HEADER = "prost-inference-key"
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"
