"""Typed results (pydantic models in OpenAI's shapes) and request parameters (TypedDicts)."""

from .audio import (
    AudioResponseFormat,
    SpeechResponseFormat,
    SpeechStreamEvent,
    SpeechUsage,
    Transcription,
    TranscriptionSegment,
    TranscriptionStreamEvent,
    TranscriptionUsage,
    TranscriptionVerbose,
    TranscriptionWord,
    Translation,
    TranslationVerbose,
)
from .batch import Batch, BatchError, BatchErrors, BatchList, BatchRequestCounts, BatchStatus
from .chat_completion import ChatCompletion, Choice, FinishReason
from .chat_completion_chunk import (
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    ChunkChoice,
)
from .chat_completion_create_params import (
    ChatCompletionContentPartParam,
    ChatCompletionCreateParams,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolParam,
    ResponseFormat,
)
from .chat_completion_message import ChatCompletionMessage, ChatCompletionMessageToolCall, Function, FunctionCall
from .chat_completion_token_logprob import ChatCompletionTokenLogprob, ChoiceLogprobs, TopLogprob
from .completion import Completion, CompletionChoice, Logprobs
from .completion_create_params import CompletionCreateParams
from .completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails
from .embedding import CreateEmbeddingResponse, Embedding, EmbeddingUsage
from .file_deleted import FileDeleted
from .file_object import FileList, FileObject, FilePurpose
from .function import FunctionDefinition, FunctionJob, FunctionJobError, FunctionList, FunctionResult
from .image import (
    Image,
    ImageEditParams,
    ImageGenerateParams,
    ImagesResponse,
    ImageStreamEvent,
    ImageStreamUsage,
    ImageVariationParams,
)
from .model import Model, ModelList

# The name the OpenAI API reference uses for the object.
Usage = CompletionUsage

__all__ = [
    "AudioResponseFormat",
    "Batch",
    "BatchError",
    "BatchErrors",
    "BatchList",
    "BatchRequestCounts",
    "BatchStatus",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionContentPartParam",
    "ChatCompletionCreateParams",
    "ChatCompletionMessage",
    "ChatCompletionMessageParam",
    "ChatCompletionMessageToolCall",
    "ChatCompletionMessageToolCallParam",
    "ChatCompletionNamedToolChoiceParam",
    "ChatCompletionStreamOptionsParam",
    "ChatCompletionTokenLogprob",
    "ChatCompletionToolChoiceOptionParam",
    "ChatCompletionToolParam",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionCreateParams",
    "CompletionTokensDetails",
    "CompletionUsage",
    "CreateEmbeddingResponse",
    "Embedding",
    "EmbeddingUsage",
    "FileDeleted",
    "FileList",
    "FileObject",
    "FilePurpose",
    "FinishReason",
    "Function",
    "FunctionCall",
    "FunctionDefinition",
    "FunctionJob",
    "FunctionJobError",
    "FunctionList",
    "FunctionResult",
    "Image",
    "ImageEditParams",
    "ImageGenerateParams",
    "ImageStreamEvent",
    "ImageStreamUsage",
    "ImageVariationParams",
    "ImagesResponse",
    "Logprobs",
    "Model",
    "ModelList",
    "PromptTokensDetails",
    "ResponseFormat",
    "SpeechResponseFormat",
    "SpeechStreamEvent",
    "SpeechUsage",
    "TopLogprob",
    "Transcription",
    "TranscriptionSegment",
    "TranscriptionStreamEvent",
    "TranscriptionUsage",
    "TranscriptionVerbose",
    "TranscriptionWord",
    "Translation",
    "TranslationVerbose",
    "Usage",
]
