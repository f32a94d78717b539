"""``ember``: serve everything on one machine, or run the gateway and workers as separate processes.

ember serve [--nats URL]               embedded NATS (unless --nats) + gateway + a worker per configured model
ember gateway --nats URL               the HTTP gateway alone
ember scale --nats URL                 this machine's workers, autoscaled models between min and max_workers
ember worker text|image|audio --model ID --nats URL
ember worker gpu --model ID --model ID ... --nats URL   several models in one process on the device they share
ember worker functions --module my_funcs --nats URL   built-in and user functions (@ember.function)
ember models                           what is configured and where its weights are
ember keys create|list|revoke|set-tier API keys, on the NATS at --nats URL (see ember.cli.keys)
ember usage [--key ID] [--since 24h]   usage totals per key and model
ember batch submit|status|cancel|download   batches of requests on a server's Batch API (see ember.cli.batch)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from ember.cli import batch as batch_cli
from ember.cli import keys as keys_cli
from ember.cli import usage as usage_cli
from ember.cli.runners import DEVICE_GROUP, FUNCTIONS_WORKER, WORKER_RUNNERS
from ember.config import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember", description="Ember: multimodal serverless inference.")
    p.add_argument("--config", type=Path, help="config file (TOML); default $EMBER_CONFIG or ./ember.toml")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: from config")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run NATS (embedded unless --nats), the gateway and the workers")
    serve.add_argument("--nats", help="join this NATS instead of starting an embedded one")
    serve.add_argument("--host", help="gateway address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gateway port (default 8000)")
    serve.add_argument("--model", action="append", dest="models", help="serve only this model (repeatable)")
    serve.add_argument("--dev", action="store_true", help="dev mode: no API keys needed (never expose it)")

    scale = sub.add_parser("scale", help="run this machine's workers, starting and stopping autoscaled ones")
    scale.add_argument("--nats", help="NATS URL (default: nats.url from config)")
    scale.add_argument("--model", action="append", dest="models", help="only this model (repeatable)")

    gw = sub.add_parser("gateway", help="run the HTTP gateway alone")
    gw.add_argument("--nats", help="NATS URL (default: nats.url from config)")
    gw.add_argument("--host")
    gw.add_argument("--port", type=int)

    worker = sub.add_parser("worker", help="run one model worker")
    worker.add_argument("modality", choices=sorted([*WORKER_RUNNERS, FUNCTIONS_WORKER, DEVICE_GROUP]))
    worker.add_argument(
        "--model",
        action="append",
        dest="models",
        default=[],
        help="a model id from the config (every modality but functions; gpu: one per model it serves)",
    )
    worker.add_argument("--module", action="append", default=[], dest="modules", help="functions: a module to load")
    worker.add_argument("--nats", help="NATS URL (default: nats.url from config)")
    worker.add_argument("--worker-id", help="a stable name for this worker (default: random)")

    sub.add_parser("models", help="list the configured models")
    keys_cli.add_parser(sub)
    usage_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    return p


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    gateway = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    if gateway:
        overrides["gateway"] = gateway
    if args.log_level:
        overrides["log_level"] = args.log_level
    if getattr(args, "dev", False):
        overrides["auth"] = {"enabled": False}
    # Overrides merge into the file's and environment's sections key by key.
    return load_settings(args.config, **overrides)


def _nats_url(args: argparse.Namespace, settings: Settings) -> str:
    url = args.nats or settings.nats.url
    if not url:
        raise ConfigError("no NATS to join: pass --nats URL or set nats.url (only `ember serve` embeds one)")
    return str(url)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "batch":
        # An API client: it needs neither the server's config file nor NATS.
        return batch_cli.run(args)
    try:
        settings = _settings(args)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            from ember.cli.serve import serve

            return serve(settings, nats_url=args.nats, only=args.models, config_path=args.config)
        if args.command == "scale":
            from ember.cli.serve import scale

            return scale(settings, nats_url=_nats_url(args, settings), only=args.models, config_path=args.config)
        if args.command == "gateway":
            from ember.gateway.server import run_gateway

            asyncio.run(run_gateway(settings, _nats_url(args, settings)))
            return 0
        if args.command == "worker":
            return _worker(args, settings)
        if args.command == "models":
            return _models(settings)
        if args.command == "usage":
            return asyncio.run(usage_cli.run(args, _nats_url(args, settings)))
        if args.command == "keys":
            return keys_cli.run(args, settings, lambda: _nats_url(args, settings))
    except ConfigError as e:
        print(f"ember: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        print(f"ember: {e.name} is not installed; install the server extras: pip install 'ember[all]'", file=sys.stderr)
        return 2
    return 1


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.modality == FUNCTIONS_WORKER:
        return _functions_worker(args, settings)
    if args.modality == DEVICE_GROUP:
        return _device_group(args, settings)
    if not args.models:
        raise ConfigError(f"`ember worker {args.modality}` needs --model ID")
    if len(args.models) > 1:
        raise ConfigError(f"`ember worker {args.modality}` serves one model; `ember worker gpu` serves several")
    model_id = args.models[0]
    spec = settings.model(model_id)  # fail on an unknown id before importing torch
    if spec.modality.value != args.modality:
        raise ConfigError(f"model {model_id!r} is a {spec.modality.value} model, not {args.modality}")
    url = _nats_url(args, settings)
    if spec.threads is not None:
        import torch

        torch.set_num_threads(spec.threads)
    asyncio.run(_runner(args.modality)(settings, model_id, url, worker_id=args.worker_id))
    return 0


def _runner(modality: str) -> Any:
    module, name = WORKER_RUNNERS[modality]
    return getattr(importlib.import_module(module), name)


def _device_group(args: argparse.Namespace, settings: Settings) -> int:
    """`ember worker gpu`: every --model in this one process, on the device they share (ember.runtimes.device_group).
    Each model's worker gets a random id (--worker-id names one worker, and here there are several)."""
    if not args.models:
        raise ConfigError("`ember worker gpu` needs a --model ID for each model it serves")
    if args.worker_id:
        raise ConfigError("`ember worker gpu` runs several workers: leave out --worker-id")
    modalities = [settings.model(model_id).modality.value for model_id in args.models]  # unknown ids fail here
    url = _nats_url(args, settings)
    from ember.runtimes.device_group.host import Member, MemberFailed, run_device_group

    members = [Member(m, modality, _runner(modality)) for m, modality in zip(args.models, modalities, strict=True)]
    try:
        asyncio.run(run_device_group(settings, members, url))
    except MemberFailed as e:
        logging.getLogger("ember.device_group").debug("the group stopped", exc_info=e.error)
        print(f"ember worker gpu: {e}", file=sys.stderr)
        return 1
    return 0


def _functions_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ember.functions.loader import FunctionModuleError
    from ember.functions.registry import DuplicateFunction
    from ember.functions.worker import run_functions_worker

    try:
        asyncio.run(run_functions_worker(settings, args.modules, _nats_url(args, settings), worker_id=args.worker_id))
    except (FunctionModuleError, DuplicateFunction) as e:
        raise ConfigError(str(e)) from None
    return 0


def _models(settings: Settings) -> int:
    from ember.config.weights import resolve_weights

    for model_id, spec in sorted(settings.models.items()):
        try:
            where = str(resolve_weights(spec, settings.cache_dir))
        except ConfigError as e:
            where = f"MISSING: {e}"
        low, high = spec.worker_range
        workers = f"{low}" if not spec.autoscaled else f"{low}..{high}"
        print(f"{model_id}\t{spec.modality.value}\tworkers={workers}\tmax_batch={spec.max_batch}\t{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
