"""Where each modality's worker lives: ``ember worker <modality>`` and ``ember serve`` look it up here.

Each entry point is ``async def run(settings, model_id, nats_url, worker_id=None)``. Modules are imported only
when a worker of that modality starts, so the gateway and the CLI never import torch.
"""

WORKER_RUNNERS: dict[str, tuple[str, str]] = {
    "text": ("ember.runtimes.text.worker", "run_text_worker"),
    "audio": ("ember.runtimes.audio.worker", "run_audio_worker"),
    "image": ("ember.runtimes.image.worker", "run_image_worker"),
    "speech": ("ember.runtimes.speech.worker", "run_speech_worker"),
    "embed": ("ember.runtimes.embed.worker", "run_embed_worker"),
}

# `ember worker functions --module M`: built-ins and user modules, no --model (ember.functions.worker).
FUNCTIONS_WORKER = "functions"

# `ember worker gpu --model A --model B ...`: several models in one process on one device (ember.runtimes.device_group).
DEVICE_GROUP = "gpu"
