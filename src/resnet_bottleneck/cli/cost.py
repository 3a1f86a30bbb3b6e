"""``resnet-bottleneck cost``: a model's parameters and MACs, or the specification's arithmetic."""

from __future__ import annotations

import json

from ._common import argument, model_name, positive_int


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "cost",
        help="parameters and MACs: of a model (--model), or the specification's block arithmetic",
        description="With --model: one model's parameters and multiply-accumulates per image (convs and "
        "classifier, as torchvision counts them). Without: the founding specification's arithmetic, a basic "
        "3x3 conv against the bottleneck triple, in parameters and MACs at one feature-map size.",
    )
    parser.add_argument("--model", type=model_name, help="a model name, e.g. resnet50")
    parser.add_argument("--image-size", type=positive_int, default=224, help="input height and width (default 224)")
    parser.add_argument(
        "--out", type=positive_int, default=256, help="block width for the specification's table (default 256)"
    )
    parser.add_argument("--mid", type=positive_int, default=64, help="bottleneck mid width for that table (default 64)")
    parser.add_argument("--wide", type=positive_int, default=2048, help="full width for that table (default 2048)")
    parser.add_argument("--size", type=positive_int, default=56, help="feature-map size for MACs (default 56)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw params and MACs against width (matplotlib)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args) -> int:
    from .. import cost

    if args.model is not None:
        report = cost.model_cost(args.model, args.image_size)
    else:
        rows = cost.spec_table(args.out, args.mid, args.wide, args.size)
    if args.plot is not None:  # before any output: a bad --plot prints nothing but the error
        with argument("--plot"):
            cost.plot_block_costs(args.plot, size=args.size)
    if args.model is not None:
        if args.json:
            print(json.dumps(report))
        else:
            print(
                f"{report['model']} at {args.image_size}x{args.image_size}: {report['params']:,} parameters, "
                f"{report['macs']:,} MACs ({report['macs'] / 1e9:.3f} GMACs) per image"
            )
    elif args.json:
        print(
            json.dumps(
                {"size": args.size, "rows": [vars(r) for r in rows], "params_ratio": rows[0].params / rows[1].params}
            )
        )
    else:
        width = max(len(r.what) for r in rows)
        print(f"{'':<{width}}  {'params':>12}  {'MACs at ' + str(args.size) + 'x' + str(args.size):>18}")
        for r in rows:
            print(f"{r.what:<{width}}  {r.params:>12,}  {r.macs:>18,}")
        print(
            f"The bottleneck triple has {rows[0].params / rows[1].params:.2f}x fewer parameters (and MACs) "
            f"than one 3x3 conv at {args.out}; two 3x3 convs at {args.wide} cost "
            f"{rows[2].params / 1e6:.1f}M parameters."
        )
    if args.plot is not None and not args.json:
        print(f"Wrote {args.plot}")
    return 0
