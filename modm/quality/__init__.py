"""Image-quality evaluation: CLIPScore, PickScore, Inception Score and FID over folders of served images.

Ray-free. `python -m modm.quality.cli` (or `modm quality`) is the command line; `calibration` turns these metrics
into the quality function Q of `modm policy calibrate`.
"""

from modm.quality.calibration import CalibrationPair, load_calibration_manifest, quality_samples, write_quality_samples
from modm.quality.clip_score import ClipScorer, clip_score_from_embeddings
from modm.quality.config import ClipScoreConfig, FeatureDims, InceptionConfig, InceptionWeights, PickScoreConfig
from modm.quality.errors import FidNumericalError, LowRankCovarianceError, QualityInputError
from modm.quality.evaluate import ImageSetScores, PromptImageMetric, compute_feature_stats, score_image_set
from modm.quality.fid import FeatureStats, FidResult, feature_stats, frechet_distance
from modm.quality.grouping import GroupBy, group_indices
from modm.quality.images import ImageEntry, PromptSource, load_image_set, load_rgb
from modm.quality.inception import InceptionFeatureExtractor, InceptionOutputs, build_inception
from modm.quality.inception_score import InceptionScore, inception_score
from modm.quality.pick_score import PickScorer, pick_score_from_embeddings
from modm.quality.report import GroupRow, format_table, summarise

__all__ = [
    "CalibrationPair",
    "ClipScoreConfig",
    "ClipScorer",
    "FeatureDims",
    "FeatureStats",
    "FidNumericalError",
    "FidResult",
    "GroupBy",
    "GroupRow",
    "ImageEntry",
    "ImageSetScores",
    "InceptionConfig",
    "InceptionFeatureExtractor",
    "InceptionOutputs",
    "InceptionScore",
    "InceptionWeights",
    "LowRankCovarianceError",
    "PickScoreConfig",
    "PickScorer",
    "PromptImageMetric",
    "PromptSource",
    "QualityInputError",
    "build_inception",
    "clip_score_from_embeddings",
    "compute_feature_stats",
    "feature_stats",
    "format_table",
    "frechet_distance",
    "group_indices",
    "inception_score",
    "load_calibration_manifest",
    "load_image_set",
    "load_rgb",
    "pick_score_from_embeddings",
    "quality_samples",
    "score_image_set",
    "summarise",
    "write_quality_samples",
]
