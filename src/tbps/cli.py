"""The `tbps` command line: synth, train, pretrain, foundation, eval, demo, index, search, serve, export."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .argtypes import non_negative_int, positive_int
from .errors import ImageReadError

CONFIG_DIR = Path(__file__).parent / "configs"


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate

    summary = generate(args.out, preset=args.preset, seed=args.seed, height=args.height, width=args.width,
                       workers=args.workers, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _load_run_config(args: argparse.Namespace) -> dict:
    from .engine.experiment import load_experiment_config

    if args.resume and args.config is None:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume without --config needs {saved}")
        # a resumed run goes to the end unless told otherwise
        return load_experiment_config(saved, ["train.stop_after_steps=null", *args.set])
    if args.config is None:
        raise SystemExit("tbps train: --config is required (e.g. --config configs/irra_tiny.yaml)")
    return load_experiment_config(args.config, args.set, search_dirs=[CONFIG_DIR])


def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from .engine.distributed import launch_processes

        return launch_processes(args.nproc, args.argv)
    return _train_config(args, _load_run_config(args))


def _run_folder(args: argparse.Namespace) -> str:
    return args.out or str(Path("runs") / Path(args.config or "run").stem)


def _train_config(args: argparse.Namespace, cfg: dict) -> int:
    from .engine.trainer import train

    summary = train(cfg, _run_folder(args), resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    """`tbps train` on a pretraining config, then (with --export) the foundation a fine-tuning config reads."""
    launcher = (args.nproc or 0) > 1 and "WORLD_SIZE" not in os.environ  # its torchrun processes export
    if launcher:
        return _cmd_train(args)
    from .engine.config_types import TRAIN_KEYS, check_config_types

    cfg = _load_run_config(args)
    check_config_types(cfg, TRAIN_KEYS)
    out = _run_folder(args)
    if os.environ.get("RANK", "0") == "0":  # each accepted invocation and its machine, for the model card
        from .foundation.ship import record_command

        record_command(out, args.argv)
    code = _train_config(args, cfg)
    if code == 0 and args.export and os.environ.get("RANK", "0") == "0":
        from .engine.foundation import export_foundation

        print(json.dumps(export_foundation(out, args.export), indent=2, default=str))
    return code


def _cmd_foundation_ship(args: argparse.Namespace) -> int:
    from .foundation.ship import ship_foundation

    card = ship_foundation(args.export, args.name, args.run, args.eval_root, config=args.config, overrides=args.set,
                           into=args.into, precision=args.precision, progress=not args.quiet)
    check = card["ship_check"]
    print(json.dumps({"name": card["name"], "dtype": card["dtype"], "files": card["files"],
                      "zero_shot_val_float32": check["float32_export"], "zero_shot_val_float16": check["float16"]},
                     indent=2))
    return 0


def _cmd_foundation_list(args: argparse.Namespace) -> int:
    from . import foundation

    root = foundation.foundation_root()
    names = foundation.shipped(root)
    for name in names:
        card_file = root / name / foundation.CARD_JSON
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        print(f"{foundation.PREFIX}{name}\t{card.get('layout', '?')}\t{card.get('dtype', '?')}\t"
              f"{root / name}")
    if not names:
        print(f"no foundation shipped in {root} (`make foundation` makes {', '.join(foundation.EXPECTED)})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine.runs import evaluate_run
    from .evaluation import format_metrics_table

    metrics, info = evaluate_run(args.run, split=args.split, checkpoint=args.checkpoint, progress=not args.quiet,
                                 data_root=args.data_root, report_dir=args.report_dir)
    extra = metrics.pop("extra", None)
    print(f"{info['method']} | {info['checkpoint']} | split {args.split}: "
          f"{info['num_queries']} queries, {info['num_images']} images")
    print(format_metrics_table(metrics))
    if extra:
        print(json.dumps(extra, indent=2, default=str))
    if args.json:
        from .utils import atomic_write_json

        atomic_write_json(args.json, {"split": args.split, **info, "metrics": metrics,
                                      **({"extra": extra} if extra else {})})
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_run

    layers = int(args.layers) if args.layers.lstrip("-").isdigit() else args.layers
    result = explain_run(args.run, args.image, args.text, args.out, layers=layers, checkpoint=args.checkpoint)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), preset=args.preset, seed=args.seed, epochs=args.epochs, progress=not args.quiet,
             overrides=args.set)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tbps", description="Text-based person search: train, evaluate, search.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render the embedded pedestrian benchmark (CUHK-PEDES layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="small", choices=["tiny", "small", "full", "pretrain"],
                   help="benchmark size, or pretrain: the pretraining corpus (40,200 images, web-style captions)")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--height", type=positive_int)
    s.add_argument("--width", type=positive_int)
    s.add_argument("--workers", type=positive_int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_synth)

    t = sub.add_parser("train", help="train a method from a YAML config")
    t.add_argument("--config", help="config file or name in configs/ (e.g. irra_tiny)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    t.add_argument("--out", help="run folder (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--nproc", type=positive_int, default=None,
                   help="train with N processes (one per GPU, or gloo on a CPU) via torchrun; "
                        "train.batch_size is the global batch")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    pt = sub.add_parser("pretrain", parents=[t], add_help=False, conflict_handler="resolve",
                        help="pretrain a foundation (e.g. --config pretrain_tiny_clip) and export it")
    pt.add_argument("--export", metavar="DIR",
                    help="write the foundation (weights in a layout backbone.pretrained reads + tokenizer) to DIR")
    pt.set_defaults(func=_cmd_pretrain)

    f = sub.add_parser("foundation", help="the foundation checkpoints shipped in tbps (foundation:<name>)")
    fsub = f.add_subparsers(dest="foundation_command", required=True)
    fs = fsub.add_parser("ship", help="put an export of `tbps pretrain --export` into the package, with its card")
    fs.add_argument("export", help="the export folder (foundation.pt, tokenizer/, foundation.json)")
    fs.add_argument("--name", required=True, help="foundation name, e.g. tiny-clip (configs: foundation:tiny-clip)")
    fs.add_argument("--run", required=True, help="the pretraining run folder (its config, log and command)")
    fs.add_argument("--eval-root", help="benchmark whose validation split measures the files (default: the run's "
                                        "data.eval_root)")
    fs.add_argument("--config", help="fine-tuning config whose model measures the files (default: irra_tiny for "
                                     "the clip layout, cada_tiny for the blip layout)")
    fs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of that config")
    fs.add_argument("--precision", default="auto", choices=["auto", "fp16", "fp32"],
                    help="auto (default): float16 unless it changes a measured zero-shot Rank-1")
    fs.add_argument("--into", help="folder to ship into (default: the package's foundation/ folder)")
    fs.add_argument("--quiet", action="store_true")
    fs.set_defaults(func=_cmd_foundation_ship)
    fl = fsub.add_parser("list", help="the shipped foundations")
    fl.set_defaults(func=_cmd_foundation_list)

    e = sub.add_parser("eval", help="evaluate a run folder or checkpoint folder")
    e.add_argument("run", help="run folder (uses checkpoints/best) or a checkpoint folder")
    e.add_argument("--split", default="test", choices=["val", "test"])
    e.add_argument("--checkpoint", default=None, help="best (default) or last, when RUN is a run folder")
    e.add_argument("--data-root", default=None, help="dataset root, if it moved since training")
    e.add_argument("--json", help="write the metrics to this JSON file")
    e.add_argument("--report-dir", help="folder for the method's extra report files (plots)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("explain", help="association maps of a caption's words and attribute phrases on an image")
    x.add_argument("run", help="run folder (uses checkpoints/best) or a checkpoint folder of a blip-layout method")
    x.add_argument("--image", required=True)
    x.add_argument("--text", required=True)
    x.add_argument("--out", required=True, help="folder for the overlays, index.json and index.html")
    x.add_argument("--layers", default="all", help="cross-attention layers to average: all (default), last or an index")
    x.add_argument("--checkpoint", default=None, help="best (default) or last, when RUN is a run folder")
    x.set_defaults(func=_cmd_explain)

    d = sub.add_parser("demo", help="generate the small benchmark, fine-tune IRRA from the tiny CLIP foundation, "
                                    "evaluate beside the zero-shot foundation, write an HTML page")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    d.add_argument("--seed", type=non_negative_int, default=0)
    d.add_argument("--epochs", type=positive_int, default=None)
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the fine-tuning config (irra_tiny), e.g. backbone.pretrained=DIR/foundation.pt")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    from .retrieval.commands import add_commands

    add_commands(sub)  # index build|add|remove|info, search, serve, export
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
            ValueError, KeyError, ImageReadError) as exc:  # bad input: one line naming it, never a traceback
        if os.environ.get("TBPS_DEBUG"):
            raise
        print(f"tbps {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (`tbps search ... --json | head`): stop without a word,
    as command-line tools do, with the status of a process ended by SIGPIPE (128 + 13)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
