"""`modm quality`: CLIPScore / PickScore / Inception Score tables, FID, reference statistics, calibration samples.

  score SOURCE            quality table of a folder or manifest, overall and per group (system, hit, k)
  fid A B                 FID of image set A against image set B or its reference statistics (B.npz)
  ref-stats SOURCE OUT    save the Inception statistics of an image set (mu, sigma, n) to OUT.npz
  calibration-samples M O (prompt, score, k, refined, full) manifest -> samples for `modm policy calibrate`

Model weights load through the ordinary loaders (open_clip, transformers, torchvision) from a hub id/tag or a
local path. Errors in the input exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path

__all__ = ["Metric", "build_parser", "main"]


class Metric(str, Enum):
    CLIP = "clip"
    PICK = "pick"
    IS = "is"


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N' for every model")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--read-batch", type=int, default=32, help="images decoded from disk at a time")


def _add_clip(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip-model", default="ViT-L-14", help="open_clip architecture or local-dir:<path>")
    parser.add_argument("--clip-pretrained", default="openai", help="open_clip pretrained tag or checkpoint file")


def _add_pick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pick-model", default="yuvalkirstain/PickScore_v1", help="hub id or CLIPModel directory")
    parser.add_argument(
        "--pick-processor", default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", help="hub id or CLIPProcessor directory"
    )


def _add_inception(parser: argparse.ArgumentParser, *, dims: bool) -> None:
    from modm.quality.config import FeatureDims, InceptionWeights

    parser.add_argument(
        "--inception-weights",
        default=InceptionWeights.IMAGENET1K_V1.value,
        choices=[w.value for w in InceptionWeights],
        help="torchvision IMAGENET1K_V1, a local state dict (file) or random (tests only)",
    )
    parser.add_argument("--inception-path", type=Path, default=None, help="state dict for --inception-weights file")
    parser.add_argument("--inception-seed", type=int, default=0, help="seed for --inception-weights random")
    if dims:
        parser.add_argument(
            "--dims",
            type=int,
            default=FeatureDims.POOL3.value,
            choices=[d.value for d in FeatureDims],
            help="FID feature layer (2048 = standard)",
        )


def _add_source(parser: argparse.ArgumentParser, name: str, *, prompts: bool) -> None:
    from modm.quality.images import PromptSource

    parser.add_argument(name, help="folder of images, or a .parquet/.csv manifest (path, prompt, system, hit, k)")
    if prompts:
        parser.add_argument(
            "--prompts",
            default=PromptSource.SIDECAR.value,
            choices=[PromptSource.SIDECAR.value, PromptSource.FILENAME.value],
            help="folder prompts from <name>.txt files or from file names (underscores = spaces)",
        )
    parser.add_argument("--system", default=None, help="system label for images whose source names none")


def _clip_config(args):
    from modm.quality.config import ClipScoreConfig

    return ClipScoreConfig(
        model=args.clip_model, pretrained=args.clip_pretrained, device=args.device, batch_size=args.batch_size
    )


def _pick_config(args):
    from modm.quality.config import PickScoreConfig

    return PickScoreConfig(
        model=args.pick_model, processor=args.pick_processor, device=args.device, batch_size=args.batch_size
    )


def _inception_config(args):
    from modm.quality.config import FeatureDims, InceptionConfig

    return InceptionConfig(
        weights=args.inception_weights,
        path=args.inception_path,
        seed=args.inception_seed,
        dims=FeatureDims(getattr(args, "dims", FeatureDims.POOL3.value)),
        device=args.device,
        batch_size=args.batch_size,
    )


def _prompt_metric(name: str, args):
    from modm.quality.clip_score import ClipScorer
    from modm.quality.pick_score import PickScorer

    if Metric(name) is Metric.CLIP:
        return ClipScorer.from_config(_clip_config(args))
    return PickScorer.from_config(_pick_config(args))


def _cmd_score(args) -> int:
    from modm.quality.evaluate import score_image_set
    from modm.quality.grouping import GroupBy
    from modm.quality.images import PromptSource, load_image_set
    from modm.quality.inception import InceptionFeatureExtractor
    from modm.quality.report import format_table, summarise, write_json, write_per_image

    metrics = list(dict.fromkeys(Metric(m) for m in args.metrics))
    needs_prompts = any(m is not Metric.IS for m in metrics)  # the Inception Score ignores prompts
    entries = load_image_set(
        args.source, prompts=PromptSource(args.prompts) if needs_prompts else PromptSource.NONE, system=args.system
    )
    scorers = [_prompt_metric(m.value, args) for m in metrics if m is not Metric.IS]
    inception = InceptionFeatureExtractor.from_config(_inception_config(args)) if Metric.IS in metrics else None
    scores = score_image_set(entries, scorers, inception, read_batch=args.read_batch)
    rows = summarise(scores, [GroupBy(g) for g in args.group_by], is_splits=args.is_splits)
    print(format_table(rows))
    if args.json:
        metadata = {
            "source": str(args.source),
            "metrics": [m.value for m in metrics],
            "is_splits": args.is_splits,
            "clip": _clip_config(args).model_dump(mode="json") if Metric.CLIP in metrics else None,
            "pick": _pick_config(args).model_dump(mode="json") if Metric.PICK in metrics else None,
            "inception": inception.extractor_id if inception else None,
        }
        print(f"wrote {write_json(args.json, rows, metadata)}")
    if args.per_image:
        print(f"wrote {write_per_image(args.per_image, scores)}")
    return 0


def _is_stats_file(source: str) -> bool:
    return Path(source).suffix == ".npz"


def _cmd_fid(args) -> int:
    from modm.quality.errors import QualityInputError
    from modm.quality.evaluate import score_image_set
    from modm.quality.fid import FeatureStats, check_rank, feature_stats, frechet_distance
    from modm.quality.grouping import ALL, GroupBy, group_indices
    from modm.quality.images import PromptSource, load_image_set
    from modm.quality.inception import InceptionFeatureExtractor

    if _is_stats_file(args.a):
        raise ValueError(f"the first set must be images (folder or manifest); put the stats file {args.a} second")
    entries = load_image_set(args.a, prompts=PromptSource.NONE, system=args.system)
    cfg = _inception_config(args)
    reference = FeatureStats.load(args.b) if _is_stats_file(args.b) else None
    if reference is not None and reference.extractor and reference.extractor != cfg.extractor_id:
        # Fail before spending the feature extraction on a comparison that cannot be made.
        raise ValueError(
            f"{args.b} holds statistics from {reference.extractor!r}, but the features would come "
            f"from {cfg.extractor_id!r}; match --inception-weights/--dims to the file"
        )
    reference_entries = None if reference is not None else load_image_set(args.b, prompts=PromptSource.NONE)
    reference_n = reference.n if reference is not None else len(reference_entries)
    groups = {ALL: list(range(len(entries)))}
    if args.group_by:
        groups.update(
            {
                f"{GroupBy(args.group_by).value}={label}": idx
                for label, idx in group_indices(entries, GroupBy(args.group_by)).items()
            }
        )
    # Refuse before any feature extraction when the answer is already known to be refused.
    for label, idx in groups.items():
        if len(idx) < 2:
            raise QualityInputError(f"group {label} of {args.a} has {len(idx)} image(s); FID needs at least 2")
        check_rank(len(idx), reference_n, int(cfg.dims), allow_low_rank=args.allow_low_rank)
    inception = InceptionFeatureExtractor.from_config(cfg)
    if reference is None:
        reference_set = score_image_set(reference_entries, (), inception, read_batch=args.read_batch)
        reference = feature_stats(reference_set.features, inception.extractor_id)
    features = score_image_set(entries, (), inception, read_batch=args.read_batch).features
    rows = []
    for label, idx in groups.items():
        result = frechet_distance(
            feature_stats(features[idx], inception.extractor_id),
            reference,
            allow_low_rank=args.allow_low_rank,
            eps=args.eps,
        )
        rows.append({"group": label, **asdict(result)})
        flag = "" if result.reliable else "  (UNRELIABLE: fewer images than feature dims)"
        print(f"FID {label} vs {args.b}: {result.fid:.4f}  (n={result.n_a} vs {result.n_b}, {result.dims}-d){flag}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"a": str(args.a), "b": str(args.b), "extractor": inception.extractor_id, "groups": rows}, indent=2
            ),
            encoding="utf-8",
        )
        print(f"wrote {path}")
    return 0


def _cmd_ref_stats(args) -> int:
    from modm.quality.evaluate import compute_feature_stats
    from modm.quality.images import PromptSource, load_image_set
    from modm.quality.inception import InceptionFeatureExtractor

    entries = load_image_set(args.source, prompts=PromptSource.NONE)
    inception = InceptionFeatureExtractor.from_config(_inception_config(args))
    stats = compute_feature_stats(entries, inception, read_batch=args.read_batch)
    path = stats.save(args.out)
    print(f"wrote {path}: n={stats.n}, {stats.dims}-d features, extractor {stats.extractor}")
    return 0


def _cmd_calibration_samples(args) -> int:
    from modm.quality.calibration import load_calibration_manifest, quality_samples, write_quality_samples

    pairs = load_calibration_manifest(args.manifest)
    samples = quality_samples(pairs, _prompt_metric(args.metric, args), read_batch=args.read_batch)
    path = write_quality_samples(args.out, samples)
    print(f"wrote {len(samples)} samples to {path}; fit a k table with: modm policy calibrate {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from modm.quality.fid import DEFAULT_SQRTM_EPS
    from modm.quality.grouping import GroupBy
    from modm.quality.inception_score import DEFAULT_IS_SPLITS

    parser = argparse.ArgumentParser(
        prog="modm quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="CLIPScore / PickScore / IS table, overall and per group")
    _add_source(score, "source", prompts=True)
    score.add_argument("--metrics", nargs="+", default=[m.value for m in Metric], choices=[m.value for m in Metric])
    score.add_argument(
        "--group-by",
        nargs="*",
        default=[g.value for g in GroupBy],
        choices=[g.value for g in GroupBy],
        help="breakdowns after the overall row",
    )
    score.add_argument("--is-splits", type=int, default=DEFAULT_IS_SPLITS, help="Inception Score splits")
    score.add_argument("--json", default=None, help="write the table as JSON here")
    score.add_argument("--per-image", default=None, help="write per-image scores as parquet here")
    _add_clip(score)
    _add_pick(score)
    _add_inception(score, dims=False)
    _add_device(score)
    score.set_defaults(func=_cmd_score)

    fid = sub.add_parser("fid", help="FID of image set A against image set B or reference statistics B.npz")
    _add_source(fid, "a", prompts=False)
    fid.add_argument("b", help="folder, manifest, or a .npz written by ref-stats")
    fid.add_argument(
        "--group-by",
        default=None,
        choices=[g.value for g in GroupBy],
        help="also the FID of each group of A (e.g. each system) against B",
    )
    fid.add_argument(
        "--allow-low-rank",
        action="store_true",
        help="compute with fewer images than feature dims (result marked unreliable)",
    )
    fid.add_argument("--eps", type=float, default=DEFAULT_SQRTM_EPS, help="diagonal offset for the sqrtm retry")
    fid.add_argument("--json", default=None, help="write the results as JSON here")
    _add_inception(fid, dims=True)
    _add_device(fid)
    fid.set_defaults(func=_cmd_fid)

    ref = sub.add_parser("ref-stats", help="save FID reference statistics (mu, sigma, n) of an image set")
    ref.add_argument("source", help="folder of images, or a .parquet/.csv manifest with a path column")
    ref.add_argument("out", help="output .npz")
    _add_inception(ref, dims=True)
    _add_device(ref)
    ref.set_defaults(func=_cmd_ref_stats)

    cal = sub.add_parser(
        "calibration-samples", help="score refined vs full images into samples for `modm policy calibrate`"
    )
    cal.add_argument("manifest", help=".parquet/.csv with prompt, score, k, refined_path, full_path")
    cal.add_argument("out", help="output .parquet or .csv (columns score, k, quality, full_quality)")
    cal.add_argument(
        "--metric",
        default=Metric.CLIP.value,
        choices=[Metric.CLIP.value, Metric.PICK.value],
        help="the quality function Q (MoDM: CLIPScore)",
    )
    _add_clip(cal)
    _add_pick(cal)
    _add_device(cal)
    cal.set_defaults(func=_cmd_calibration_samples)
    return parser


def main(argv: list[str] | None = None) -> int:
    from modm.models.loading import ModelLoadError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (ValueError, ModelLoadError, FileNotFoundError) as err:  # pydantic errors are ValueErrors
        print(f"modm quality: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
