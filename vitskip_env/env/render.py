"""``rgb_array`` frames: the image, upscaled, beside a strip with one cell per block."""

from __future__ import annotations

import numpy as np

#: Cell colours of the block strip (RGB).
EXECUTED = (46, 160, 67)
SKIPPED = (70, 70, 70)
NEXT = (240, 190, 20)
PENDING = (225, 225, 225)
STRIP_WIDTH = 24
MIN_SIDE = 128


def render_frame(image: np.ndarray, executed: np.ndarray, decided: int) -> np.ndarray:
    """One frame: ``uint8 (H', W' + STRIP_WIDTH, 3)``.

    Args:
        image: ``uint8 (3, H, W)`` dataset image.
        executed: ``bool (depth,)`` executed blocks (only the first ``decided`` are meaningful).
        decided: Blocks decided so far; cell ``decided`` (if any) is the one about to be decided.

    The strip runs top (block 0) to bottom: green = executed, dark grey = skipped, yellow = next
    decision, light grey = not reached yet.
    """
    _, h, w = image.shape
    scale = max(1, -(-MIN_SIDE // max(h, w)))
    img = np.ascontiguousarray(image.transpose(1, 2, 0)).repeat(scale, 0).repeat(scale, 1)
    depth = executed.shape[0]
    strip = np.full((img.shape[0], STRIP_WIDTH, 3), 255, dtype=np.uint8)
    edges = np.linspace(0, img.shape[0], depth + 1).round().astype(int)
    for i in range(depth):
        color = (EXECUTED if executed[i] else SKIPPED) if i < decided else (NEXT if i == decided else PENDING)
        strip[edges[i] + 1 : max(edges[i] + 1, edges[i + 1] - 1), 3:-3] = color
    return np.concatenate([img, strip], axis=1)
