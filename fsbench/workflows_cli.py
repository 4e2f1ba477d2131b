"""``main.py predict``, ``main.py export`` and ``main.py convert``: the subcommands (flags, dispatch).

The flag names of rootvisionai/dml_segmentation's inference.py / packaged_inference.py work as
aliases: --support_image, --support_annotation, --inout_folder (the query folder) and
--checkpoint_dir (a folder, or logs/<folder>, holding ckpt_finetuned.pth or ckpt.pth).

Exit status of predict: 0 every query written; 3 (SKIPPED_EXIT_STATUS) finished, but query files
that could not be read were skipped (each named in one line and in predict.json); 1 an error
(nothing predicted); 2 bad flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fsbench.errors import FsbenchError, one_line

SUBCOMMANDS = ("predict", "export", "convert")
ORIGINAL_CHECKPOINTS = ("ckpt_finetuned.pth", "ckpt.pth")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"fsbench: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _weights_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--load", "--checkpoint", dest="load", type=Path,
                       help="fsbench checkpoint (.safetensors) or the DML repo's ckpt.pth (proxies.pth beside it)")
    group.add_argument("--checkpoint_dir", "--checkpoint-dir", dest="checkpoint_dir", type=Path,
                       help="the DML repo's checkpoint folder (or logs/<name>): ckpt_finetuned.pth, else ckpt.pth")
    group.add_argument("--method", help="refuse a checkpoint of another method (default: the checkpoint's)")
    group.add_argument("--img-size", "--img_size", dest="img_size", type=int,
                       help="model input size (default: the checkpoint's run, else the preprocessing profile's)")
    group.add_argument("--preprocessing", help="hsnet or dml_original (default: the method's setting, else hsnet)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def build_parser(command: str) -> argparse.ArgumentParser:
    if command == "convert":
        parser = _Parser(prog="main.py convert", description="Write a released (pickled) checkpoint as an fsbench checkpoint.")
        parser.add_argument("source", type=Path, help="the foreign checkpoint (HSNet best_model.pt, iFSL .ckpt, the DML repo's ckpt.pth)")
        parser.add_argument("target", type=Path, help="the fsbench checkpoint to write (*.safetensors)")
        parser.add_argument("--method", help="the method the file holds, where its weights fit several (asnet / asnethm)")
        return parser
    if command == "export":
        parser = _Parser(prog="main.py export", description="Package a model (network + inference + settings) into one TorchScript file.")
        _weights_flags(parser)
        parser.add_argument("--out", type=Path, required=True, help="package file to write (e.g. model.fsbench.pt)")
        parser.add_argument("--fp16", action="store_true", help="half-precision network (off by default; the kNN/prototype step stays fp32)")
        return parser
    parser = _Parser(prog="main.py predict", description="Segment query images from annotated support images.")
    _weights_flags(parser)
    parser.add_argument("--packaged", type=Path, help="run a file written by `main.py export` instead of --load")
    data = parser.add_argument_group("images")
    data.add_argument("--support-image", "--support_image", dest="support_images", type=Path, nargs="+", default=[],
                      help="support image(s)")
    data.add_argument("--support-annotation", "--support_annotation", dest="support_annotations", type=Path, nargs="+", default=[],
                      help="one annotation per support image: LabelMe JSON, COCO JSON or mask PNG")
    data.add_argument("--query", "--inout_folder", "--query-folder", dest="queries", type=Path, nargs="+", default=[],
                      help="query image files and/or folders of images")
    data.add_argument("--labels", nargs="+", help="labels to segment, in way order (default: every label in the supports)")
    data.add_argument("--labelme-shapes", default="as_drawn", choices=("as_drawn", "original"),
                      help="LabelMe rectangles/circles: filled as drawn (default) or, as the DML repo does, their points as a polygon")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="folder for masks/, overlays/, scores/, predict.json (default: output-<query folder name>)")
    out.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    out.add_argument("--batch-size", type=int, default=4, help="queries per episode (they share the supports' embedding)")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def resolve_weights(args) -> Path | None:
    if args.checkpoint_dir is None:
        return args.load
    if args.load is not None:
        raise FsbenchError("give --load or --checkpoint_dir, not both")
    folder = args.checkpoint_dir
    if not folder.is_dir() and (Path("logs") / folder).is_dir():
        folder = Path("logs") / folder  # the DML repo keeps checkpoint folders under logs/
    for name in ORIGINAL_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise FsbenchError(f"no {' or '.join(ORIGINAL_CHECKPOINTS)} in {folder}")


def _device(name: str):
    from fsbench.run import resolve_device

    return resolve_device(name)


def _load(args, device):
    """(method, record, preprocessing name, img_size) from --load / --checkpoint_dir."""
    from fsbench.model_files import load_method
    from fsbench.preprocessing import get_preprocessing

    weights = resolve_weights(args)
    if weights is None:
        raise FsbenchError("give the model: --load CKPT (or --checkpoint_dir DIR, or --packaged FILE for predict)")
    method, record = load_method(weights, args.method, device)
    profile = get_preprocessing(args.preprocessing or getattr(method.config, "preprocessing", "hsnet"))
    img_size = args.img_size or record.get("img_size") or profile.default_size
    return method, record, profile, img_size


def run_export(args) -> int:
    from fsbench.package import export_method

    device = _device(args.device)
    method, record, profile, img_size = _load(args, device)
    metadata = export_method(method, record, profile.name, img_size, args.out, args.fp16)
    print(f"Packaged {metadata['method']} ({profile.name} preprocessing, {img_size} px{', fp16' if args.fp16 else ''}) -> {args.out}")
    return 0


def run_predict(args) -> int:
    from fsbench.predict import SKIPPED_EXIT_STATUS, PredictSettings, choose_labels, find_queries, load_supports, predict_folder
    from fsbench.preprocessing import get_preprocessing

    if args.batch_size < 1:
        raise FsbenchError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.queries:
        raise FsbenchError("give query images: --query FILE_OR_FOLDER ... (alias --inout_folder)")
    device = _device(args.device)
    supports = load_supports(args.support_images, args.support_annotations, args.labelme_shapes)
    labels = choose_labels(supports, args.labels)
    queries = find_queries(args.queries)
    out_dir = args.out or Path(f"output-{args.queries[0].resolve().name}")
    if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
        raise FsbenchError(f"output folder {out_dir} is not empty; pass --overwrite to write into it")
    if args.packaged is not None:
        if args.load is not None or args.checkpoint_dir is not None:
            raise FsbenchError("give --packaged or --load, not both")
        from fsbench.package import PackagedModel

        model = PackagedModel(args.packaged, device)
        if args.method is not None and model.metadata["method"] != args.method:
            raise FsbenchError(f"package {args.packaged} holds method {model.metadata['method']!r}, not {args.method!r}")
        profile = get_preprocessing(args.preprocessing or model.metadata["preprocessing"])
        img_size = args.img_size or model.metadata["img_size"]
        predict, record = model.predict, {"packaged": str(args.packaged), "method": model.metadata["method"], "source": model.metadata.get("source")}
        valid_size = model.valid_size
        valid_size(img_size, img_size)  # a size the package cannot take is refused before anything is written
    else:
        method, record, profile, img_size = _load(args, device)
        predict, valid_size = method.predict, method.valid_size
    settings = PredictSettings(out_dir=out_dir, img_size=img_size, batch_size=args.batch_size, device=device, progress=not args.no_progress)
    report = predict_folder(predict, supports, labels, queries, profile, settings, record, valid_size)
    rate = report.written / report.elapsed_s if report.elapsed_s else float("nan")
    print(f"Wrote {report.written} of {len(queries)} queries to {out_dir} ({', '.join(labels)}; {rate:.2f} queries/s)")
    if report.skipped:
        print(f"fsbench: skipped {len(report.skipped)} unreadable query file(s); see {out_dir / 'predict.json'}", file=sys.stderr)
        return SKIPPED_EXIT_STATUS
    return 0


def run_convert(args) -> int:
    from fsbench.convert import convert_checkpoint

    metadata = convert_checkpoint(args.source, args.target, args.method)
    source = metadata["converted_from"]
    print(f"{args.target}: {metadata['method']} ({metadata['config'].get('backbone')}) from {source['format']} "
          f"{args.source} (sha256 {source['sha256'][:12]}...)")
    return 0


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    args = build_parser(command).parse_args(rest)
    runners = {"export": run_export, "predict": run_predict, "convert": run_convert}
    try:
        return runners[command](args)
    except FsbenchError as error:
        print(f"fsbench: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fsbench: interrupted", file=sys.stderr)
        return 130
