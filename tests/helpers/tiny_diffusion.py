"""Tiny random-weight diffusion pipelines written in the real on-disk formats, for the image runtime's tests.

- ``write_tiny_pixel``: Ember's own layout, written by the training script's ``save_pipeline`` (16x16, MiniLM).
- ``write_tiny_sd``: a standard StableDiffusionPipeline folder (``save_pretrained``) with tiny components, like
  diffusers' ``get_dummy_components()``, and a CLIP tokenizer built here from a byte-level vocabulary (no hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import torch

TINY_PIXEL_SIZE = 16


def tiny_unet(size: int, cross_dim: int, in_channels: int = 3) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def write_tiny_pixel(folder: Path, seed: int = 0, *, own_encoder: bool = False) -> Path:
    """Ember's pixel pipeline with a random 16x16 UNet over MiniLM's 384-wide states; with ``own_encoder``, over a
    tiny random BERT's 32-wide states kept in the folder (``text_encoder_dir``), so that no package is needed."""
    from ember.runtimes.image.train.train import save_pipeline

    torch.manual_seed(seed)
    width = 32 if own_encoder else 384
    save_pipeline(tiny_unet(TINY_PIXEL_SIZE, width), folder, size=TINY_PIXEL_SIZE, max_tokens=16, meta={"steps": 0})
    extra = json.loads((folder / "ember_pipeline.json").read_text())
    extra["default_steps"] = 2
    if own_encoder:
        write_tiny_bert(folder / "text_encoder", width)
        extra["text_encoder_dir"] = "text_encoder"
    (folder / "ember_pipeline.json").write_text(json.dumps(extra, indent=2))
    return folder


def write_tiny_bert(folder: Path, width: int) -> Path:
    """A random BERT of ``width`` with a WordPiece tokenizer over lower-case letters and digits, as a transformers
    folder (what MiniLM's package holds, in miniature)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    ids = {token: i for i, token in enumerate(vocab)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def _clip_tokenizer():  # type: ignore[no-untyped-def]
    """A CLIP BPE tokenizer over single bytes (no merges): every text tokenizes, nothing is downloaded."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def write_tiny_sd(folder: Path, seed: int = 0, scheduler: str = "DDIMScheduler") -> Path:
    """A StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer, scheduler) of random tiny weights;
    images are 32x32 (a 16x16 latent, VAE factor 2)."""
    from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = tiny_unet(16, 32, in_channels=4)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    tokenizer = _clip_tokenizer()
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
    )
    sched_cls = {"DDIMScheduler": DDIMScheduler, "LCMScheduler": LCMScheduler}[scheduler]
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text_config).eval(),
        tokenizer=tokenizer,
        scheduler=sched_cls(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return folder


def image_settings(folder: Path, model_id: str, **spec: object):  # type: ignore[no-untyped-def]
    """Settings serving the pipeline in ``folder`` as image model ``model_id`` (dev mode, no keys)."""
    from ember.config import Settings
    from ember.config.settings import ModelSpec
    from tests.helpers.cluster import only_models

    models = only_models({model_id: ModelSpec(modality="image", path=folder, **spec)})
    return Settings(models=models, auth={"enabled": False})


@contextlib.asynccontextmanager
async def image_worker(settings, model_id: str, nats_url: str, gateway_url: str):  # type: ignore[no-untyped-def]
    """The real image worker entry point (``run_image_worker``) on this event loop, until the block ends; waits
    until the gateway lists the model."""
    from ember.runtimes.image.worker import run_image_worker

    stop = asyncio.Event()
    task = asyncio.create_task(run_image_worker(settings, model_id, nats_url, stop=stop))
    try:
        async with httpx.AsyncClient(base_url=gateway_url, timeout=5) as http:
            for _ in range(600):
                if task.done():
                    task.result()  # raises the worker's start error
                listed = (await http.get("/v1/models")).json()["data"]
                if any(m["id"] == model_id and m["workers"] >= 1 for m in listed):
                    break
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError(f"image model {model_id!r} did not come up")
        yield task
    finally:
        stop.set()
        await task
