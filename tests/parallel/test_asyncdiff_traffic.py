"""AsyncDiff on a DiT (SD3) broadcasts only component-boundary activations, as the original SD3 path does
(`comm_index`), not every block's cached output. Bytes per step are counted at the model's broadcasts on 2 gloo
ranks for SD3.5-Large's 38 blocks (tiny width); the image is bit-identical to the every-block broadcast's."""

from __future__ import annotations

import numpy as np
import pytest

import traffic_workers
from spawn import run_ranks

STEPS, WARMUP = 5, 2
ASYNC_STEPS = STEPS - WARMUP
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ranks(clip_tokenizer):
    return run_ranks(
        traffic_workers.asyncdiff_sd3_traffic,
        2,
        timeout_s=200,
        tokenizer=clip_tokenizer,
        steps=STEPS,
        warmup_steps=WARMUP,
    )


def test_only_component_boundaries_are_broadcast(ranks):
    for rank in ranks:
        boundaries, every_block = rank["boundaries"], rank["every_block"]
        # Stride 1 on 2 ranks: each step past the warm-up broadcasts component 0's cache from rank 0 and the
        # prediction from rank 1; rank 1's own component (the last) is read by no one.
        assert boundaries["cache_bytes"] == ASYNC_STEPS * boundaries["boundary_bytes"][0]
        assert every_block["cache_bytes"] == ASYNC_STEPS * sum(every_block["buffer_bytes"])
        assert boundaries["prediction_bytes"] == every_block["prediction_bytes"] > 0
    first = ranks[0]
    per_step = {
        name: (first[name]["cache_bytes"] + first[name]["prediction_bytes"]) / ASYNC_STEPS
        for name in ("every_block", "boundaries")
    }
    print(
        f"\nAsyncDiff, SD3 with {first['boundaries']['units']} blocks (SD3.5-Large's count, tiny width), "
        f"2 gloo ranks, 64x64, bytes per step past the warm-up: every block {per_step['every_block']:.0f}, "
        f"component boundaries {per_step['boundaries']:.0f} "
        f"({per_step['every_block'] / per_step['boundaries']:.1f}x less)"
    )
    assert per_step["boundaries"] * 10 < per_step["every_block"]


def test_the_image_is_what_the_every_block_broadcast_gave(ranks):
    for rank in ranks:
        np.testing.assert_array_equal(rank["boundaries"]["image"], rank["every_block"]["image"])
    np.testing.assert_array_equal(ranks[0]["boundaries"]["image"], ranks[1]["boundaries"]["image"])
