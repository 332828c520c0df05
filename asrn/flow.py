"""Optical flow for the motion stream: TSN's stacks of 5 flow pairs (10 channels) per time step.

OpenCV's DIS flow (ships with opencv-python-headless, runs offline, a few ms per pair on a CPU).
Channels are interleaved per pair, (dx_0, dy_0, dx_1, dy_1, ...), as TSN stacks its x/y flow images;
displacements are in pixels of the given frames, clipped to +-FLOW_CLIP and scaled to [-1, 1].
Between the CPU stage and the encoders a stack travels as uint8, as TSN stores its flow images
(`quantize_flow`: 255 levels over [-1, 1], a step of 2 * FLOW_CLIP / 254 px); the encoder dequantises it.
"""

from __future__ import annotations

import cv2
import numpy as np

from asrn.errors import AsrnError

FLOW_CLIP = 20.0  # pixels; TSN's flow images are clipped at +-20 too
FLOW_PAIRS = 5  # TSN: 5 pairs -> 10 channels
FLOW_ZERO = 127  # uint8 level of zero flow; levels 0..254 cover [-1, 1] (255 is never written)


class FlowError(AsrnError):
    """Frames that cannot be turned into a flow stack; the message says which shape was given."""


def _dis(preset: int) -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(preset)


def flow_stack(window: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST) -> np.ndarray:
    """(P+1, H, W) uint8 grayscale consecutive frames -> (2P, H, W) float32 in [-1, 1].

    Flow of pair i maps frame i to frame i+1: frame_i(x) ~ frame_{i+1}(x + flow), so a scene moving
    right gives dx > 0.
    """
    window = np.asarray(window)
    if window.ndim != 3 or window.shape[0] < 2:
        raise FlowError(f"flow_stack expects (P+1, H, W) grayscale frames with P >= 1, got shape {window.shape}")
    if window.dtype != np.uint8:
        raise FlowError(f"flow_stack expects uint8 frames, got {window.dtype}")
    num_pairs, height, width = window.shape[0] - 1, window.shape[1], window.shape[2]
    dis = _dis(preset)
    stack = np.empty((2 * num_pairs, height, width), np.float32)  # (2P, H, W)
    for i in range(num_pairs):
        flow = dis.calc(window[i], window[i + 1], None)  # (H, W, 2) px
        stack[2 * i] = flow[..., 0]
        stack[2 * i + 1] = flow[..., 1]
    np.clip(stack, -FLOW_CLIP, FLOW_CLIP, out=stack)
    stack /= FLOW_CLIP
    return stack


def flow_stacks(windows: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST) -> np.ndarray:
    """(T, P+1, H, W) uint8 -> (T, 2P, H, W) float32: one flow stack per time step."""
    windows = np.asarray(windows)
    if windows.ndim != 4:
        raise FlowError(f"flow_stacks expects (T, P+1, H, W) grayscale windows, got shape {windows.shape}")
    out = np.empty((windows.shape[0], 2 * (windows.shape[1] - 1), windows.shape[2], windows.shape[3]), np.float32)
    for t in range(windows.shape[0]):
        out[t] = flow_stack(windows[t], preset)
    return out


def quantize_flow(stacks: np.ndarray) -> np.ndarray:
    """(..., H, W) float in [-1, 1] -> uint8 levels 0..254 (FLOW_ZERO at 0): a quarter of float32's bytes."""
    levels = np.rint(np.clip(stacks, -1.0, 1.0) * FLOW_ZERO) + FLOW_ZERO
    return levels.astype(np.uint8)


def dequantize_flow(levels: np.ndarray) -> np.ndarray:
    """uint8 levels -> float32 in [-1, 1]; dequantize_flow(quantize_flow(x)) is within 0.5 / FLOW_ZERO of x.

    Encoders do the same on their device (asrn.encoders.FlowEncoder)."""
    return (np.asarray(levels, np.float32) - FLOW_ZERO) / FLOW_ZERO
