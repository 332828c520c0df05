"""asrn.flow: DIS flow stacks have TSN's shape, and a known translation comes out with sign and size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from asrn.flow import FLOW_CLIP, FLOW_ZERO, FlowError, dequantize_flow, flow_stack, flow_stacks, quantize_flow


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY), (256, 256))  # (256, 256) uint8


def moving_right(gray: np.ndarray, num_frames: int, step: int, size: int = 160) -> np.ndarray:
    """(num_frames, size, size) crops whose content moves `step` px to the right per frame."""
    x0 = 60
    return np.stack([gray[40:40 + size, x0 - step * i: x0 - step * i + size] for i in range(num_frames)])


def test_translation_right_gives_positive_dx(gray):
    window = moving_right(gray, 6, step=3)
    stack = flow_stack(window)  # (10, H, W)
    assert stack.shape == (10, 160, 160) and stack.dtype == np.float32
    interior = stack[:, 16:-16, 16:-16] * FLOW_CLIP  # back to pixels, away from the borders
    assert interior[0::2].mean() == pytest.approx(3.0, abs=0.4)
    assert abs(interior[1::2].mean()) < 0.4


def test_translation_left_gives_negative_dx(gray):
    window = moving_right(gray, 2, step=-2)
    stack = flow_stack(window)  # (2, H, W)
    assert stack[0, 16:-16, 16:-16].mean() * FLOW_CLIP == pytest.approx(-2.0, abs=0.4)


def test_values_are_clipped_to_unit_range(gray):
    window = np.stack([gray[:128, :128], gray[100:228, 100:228]])  # unrelated frames: wild flow
    stack = flow_stack(window)
    assert stack.min() >= -1.0 and stack.max() <= 1.0


def test_flow_stacks_shape(gray):
    windows = np.stack([moving_right(gray, 6, 1, size=64), moving_right(gray, 6, 2, size=64)])  # (2, 6, 64, 64)
    assert flow_stacks(windows).shape == (2, 10, 64, 64)


def test_bad_input_is_refused(gray):
    with pytest.raises(FlowError, match="shape"):
        flow_stack(gray)
    with pytest.raises(FlowError, match="uint8"):
        flow_stack(moving_right(gray, 3, 1).astype(np.float32))


def test_quantized_flow_is_uint8_and_dequantizes_within_half_a_level(gray):
    stack = flow_stack(moving_right(gray, 6, 2))  # (10, 160, 160) float32 in [-1, 1]
    levels = quantize_flow(stack)
    assert levels.dtype == np.uint8 and levels.shape == stack.shape and levels.nbytes * 4 == stack.nbytes
    assert np.abs(dequantize_flow(levels) - stack).max() <= 0.5 / FLOW_ZERO + 1e-6
    edges = quantize_flow(np.array([-1.0, 0.0, 1.0, -3.0, 3.0], np.float32))
    assert edges.tolist() == [0, FLOW_ZERO, 2 * FLOW_ZERO, 0, 2 * FLOW_ZERO]  # zero flow stays exactly zero
    assert dequantize_flow(edges).tolist() == [-1.0, 0.0, 1.0, -1.0, 1.0]
