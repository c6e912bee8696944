"""EditMGT demo: `python app.py` (offline: the built-in tiny model on the CPU).

Also the Hugging Face Space entry point (README front matter: app_file app.py). Models
load in main(), never at import; on a Space the default model is loaded before serving.
"""

from editmgt_app import gpu  # noqa: F401  - imports `spaces` before anything touches CUDA

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from editmgt.zoo import ZOO_FILE  # noqa: E402

logger = logging.getLogger("editmgt_app")

ON_SPACE = bool(os.environ.get("SPACE_ID"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="zoo id to select at start (default: first available of the zoo's "
                                   "default_preference, e.g. editmgt, then tiny-shapes, then tiny)")
    p.add_argument("--8bit", dest="load_8bit", action="store_true",
                   help="load the start-up model with 8-bit transformer and Gemma2 linears")
    p.add_argument("--checkpoint", action="append", default=[], metavar="ID=SRC",
                   help="point a zoo entry at a local folder, owner/repo or owner/repo@revision (repeatable)")
    p.add_argument("--zoo", default=str(ZOO_FILE), help="model zoo file (default: checkpoints.yaml)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-loaded", type=int, default=None, help="keep at most this many models loaded")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                   help="evict least recently used models beyond this (default: 90%% of free GPU memory, "
                        "or half the free RAM on CPU)")
    p.add_argument("--preload", action="store_true", help="load the start-up model before serving "
                                                         "(always on a Space)")
    p.add_argument("--cache-lifetime", type=int, default=None, metavar="S",
                   help="delete uploads and outputs older than this many seconds (default: CACHE_LIFETIME_S "
                        "in editmgt_app/ui.py); "
                        "the rest are deleted at shutdown")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def create_app(args: argparse.Namespace):
    """Zoo, manager, service and Blocks (no weights loaded unless --preload / Space)."""
    import torch

    from editmgt.models.quantize import quiet_bitsandbytes_logs
    from editmgt.zoo import choose_default, hub_reachable, load_zoo, parse_checkpoint_flags
    from editmgt_app.loading import PipelineLoader
    from editmgt_app.manager import ModelManager
    from editmgt_app.service import EditService
    from editmgt_app.ui import CACHE_LIFETIME_S, build_demo

    quiet_bitsandbytes_logs()  # before any model load imports bitsandbytes (via diffusers)
    zoo = load_zoo(args.zoo, overrides=parse_checkpoint_flags(args.checkpoint))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    manager = ModelManager(
        zoo, PipelineLoader(), device=device, dtype=getattr(torch, dtype_name),
        budget_bytes=int(args.memory_budget * 1024**3) if args.memory_budget else None,
        max_loaded=args.max_loaded, hub_reachable=hub_reachable)
    if args.model:
        if args.model not in zoo:
            raise SystemExit(f"--model {args.model}: unknown; choose one of {', '.join(zoo.ids)}")
        default = args.model
    else:
        default = choose_default(zoo, manager.resolve)
    logger.info("start-up model: %s (%s)", default, manager.resolve(default).reason or "available")
    if args.preload or ON_SPACE:
        manager.get(default, args.load_8bit)
    service = EditService(manager)
    cache_lifetime = CACHE_LIFETIME_S if args.cache_lifetime is None else args.cache_lifetime
    return build_demo(service, default, default_8bit=args.load_8bit, cache_lifetime_s=cache_lifetime), service


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from editmgt.zoo import ZooError
    from editmgt_app.ui import launch_options

    try:
        demo, _service = create_app(args)  # queued: one GPU job at a time, no route around the queue
    except ZooError as err:
        logger.error("%s", err)
        sys.exit(2)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())


if __name__ == "__main__":
    main()
