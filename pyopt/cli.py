"""The ``pyopt`` console script.

pyopt bench [options]     time every kernel family against NumPy and torch (``-h``)
pyopt check [options]     check every kernel family against float64 references (``-h``)
pyopt train [options]     train an MLP on scikit-learn's digits, on pyopt's own layers or as
                          a torch training loop (see ``pyopt train -h``)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence


def _threads(value: str) -> int | None:
    """``--threads``: "auto" (None) or a positive count."""
    if value == "auto":
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {value!r}")
    return threads


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from pyopt._train import FRAMEWORKS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train an MLP on scikit-learn's bundled digits dataset",
        description=(
            "Train Linear -> BatchNorm -> ReLU -> Dropout blocks (He init) with AdamW, a "
            "linear-warmup + cosine LR schedule and global-norm clipping on scikit-learn's "
            "digits (no download), printing per-epoch loss and accuracy."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default=d.framework,
        help=(
            "pyopt: pyopt's own layers and optimizer; torch: torch modules and autograd with "
            "pyopt.torch's BatchNorm1d, Dropout and AdamW, torch's lr_scheduler (needs the "
            "'torch' extra)"
        ),
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden), help="widths")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--test-size", type=float, default=d.test_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    p.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        metavar="N|auto",
        help="Numba threads; auto: 1, or 2 where 4 cores are free of load (see pyopt._train)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or progress lines on stderr (only the results on stdout)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--min-accuracy",
        type=float,
        metavar="FRACTION",
        help="exit with status 1 when the final test accuracy is below this",
    )
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pyopt._train import TrainConfig, check_config, pick_device, require_framework, train

    # Each field has the option of its name (``--batch-size`` for ``batch_size``).
    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{**options, "hidden": tuple(args.hidden)})
    try:
        check_config(config)
        require_framework(config.framework)
        pick_device(config.device, config.framework)
    except (ValueError, RuntimeError) as exc:
        print(f"pyopt train: error: {exc}", file=sys.stderr)
        return 2
    result = train(config, log=sys.stdout, progress=None if args.no_progress else sys.stderr)
    print(
        f"test accuracy {100 * result.test_accuracy:.2f}% "
        f"({result.test_correct}/{result.test_count}) on {result.device} "
        f"in {result.seconds:.1f} s ({result.first_step_s:.1f} s of it the model build and "
        "first step: compiling or loading the kernels)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(result), f, indent=1)
    if args.min_accuracy is not None and result.test_accuracy < args.min_accuracy:
        print(
            f"pyopt train: test accuracy {result.test_accuracy:.4f} is below "
            f"--min-accuracy {args.min_accuracy}",
            file=sys.stderr,
        )
        return 1
    return 0


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    # Its options are the benchmark suite's own (pyopt.bench.suite): passed through.
    p = sub.add_parser(
        "bench",
        help="benchmark every kernel family against NumPy and torch, with a roofline",
        add_help=False,
    )
    p.set_defaults(run=None)


def _check_parser(sub: argparse._SubParsersAction) -> None:
    from pyopt import _check

    p = sub.add_parser(
        "check",
        help="check every kernel family on this machine against float64 references",
        description=_check.__doc__.splitlines()[0],
    )
    _check.add_arguments(p)
    p.set_defaults(run=_check.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyopt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    _check_parser(sub)
    _train_parser(sub)
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        from pyopt.bench.suite import main as bench_main

        return bench_main(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
