"""`asrn synth videos`: small H.264 videos that look like the SRIV task in miniature, with boxes and a manifest.

Each video has 3-5 shots (more when it has many labels) separated by hard cuts, each shot its own scene (gradient +
texture), and two person figures (a third, smaller bystander sometimes) drawn as a body (torso, arms, legs) and a
separate head with a face (skin-coloured ellipse, eyes, mouth). Labels are drawn as for `asrn synth features`
(`synth_features.draw_labels`: every class at its SRIV Table 1 rate, at least one `sub:*` and one `obj:*`). The
labels are visible only in *relevant* shots, one per label of the larger group (at least 1-2), never adjacent; each
shows one sub and one obj label, and the other shots show neutral figures (standing or drifting, plain mouths, equal
sizes, a muted scene). A label for which a short video has no room is left out of its labels. In a relevant shot
the `sub` label sets how figures A and B move and their faces, the `obj` label their sizes, spacing, clothes and
the scene:

  label            motion (A, B)              mouth  eyes  |  label           B/A size  gap     outfit    scene
  sub:dominant     push: A advances, B backs  frown  small |  obj:supervisor  0.75      medium  suit      office
  sub:competitive  face-off: lunge to and fro open   small |  obj:peer        1.0       medium  same      office
  sub:trusting     approach                   smile  big   |  obj:service     1.0       medium  uniform   shop
  sub:warm         approach                   grin   -     |  obj:parent      0.6       close   -         home
  sub:friendly     walk together side by side smile  -     |  obj:mating      0.9       close   contrast  evening
  sub:attached     chase: B follows A closely smile  big   |  obj:sibling     A,B 0.75  close   same      home
  sub:inhibited    move apart                 small  small |  obj:friendly    1.0       medium  -         park
  sub:assured      stand still                smile  -     |  obj:hostile     1.0       far     dark      night

(`-`: the neutral value. Two labels of one group go to two different relevant shots.) Outputs in `out`:
`videos/<id>.mp4` (libx264, yuv420p, one thread and constant QP: the same seed gives byte-identical files;
with CRF, x264's rate control gave different bytes from one process to the next),
`boxes/<id>.json` (tracks.save_tracks: every drawn person and head per frame, clipped to the frame),
`meta/<id>.json` (shots, which are relevant and what was planted; `cut_frames`: the first frame of every shot after
the first, the truth `asrn extract`'s cut detector (asrn.shots) is checked against) and `manifest.csv`.

`write_photo_clip` composes a clip from real photographs that scikit-image ships (one slowly panning shot per
photograph, hard cuts between them): real footage's colour statistics, with known cuts, for the cut detector's and
`asrn predict`'s tests.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from asrn.manifest import write_manifest
from asrn.synth_features import SyntheticDataError, draw_labels
from asrn.tracks import Tracks, save_tracks


@dataclass(frozen=True)
class Cue:
    """What a relevant shot shows; None leaves the neutral value."""
    motion: str | None = None  # still, approach, apart, chase, together, push, faceoff
    mouth: str | None = None  # smile, grin, frown, open, small (neutral: line)
    eyes: str | None = None  # big, small (neutral: normal)
    size_ratio: float | None = None  # height of B / height of A
    both_small: bool = False  # A and B both child-sized
    gap: str | None = None  # close, medium, far: distance between A and B
    outfit: str | None = None  # suit, same, uniform, contrast, dark
    scene: str | None = None  # a key of SCENES


CUES: dict[str, Cue] = {
    "sub:dominant": Cue(motion="push", mouth="frown", eyes="small"),
    "sub:competitive": Cue(motion="faceoff", mouth="open", eyes="small"),
    "sub:trusting": Cue(motion="approach", mouth="smile", eyes="big"),
    "sub:warm": Cue(motion="approach", mouth="grin"),
    "sub:friendly": Cue(motion="together", mouth="smile"),
    "sub:attached": Cue(motion="chase", mouth="smile", eyes="big"),
    "sub:inhibited": Cue(motion="apart", mouth="small", eyes="small"),
    "sub:assured": Cue(motion="still", mouth="smile"),
    "obj:supervisor": Cue(size_ratio=0.75, gap="medium", outfit="suit", scene="office"),
    "obj:peer": Cue(size_ratio=1.0, gap="medium", outfit="same", scene="office"),
    "obj:service": Cue(size_ratio=1.0, gap="medium", outfit="uniform", scene="shop"),
    "obj:parent": Cue(size_ratio=0.6, gap="close", scene="home"),
    "obj:mating": Cue(size_ratio=0.9, gap="close", outfit="contrast", scene="evening"),
    "obj:sibling": Cue(size_ratio=1.0, both_small=True, gap="close", outfit="same", scene="home"),
    "obj:friendly": Cue(size_ratio=1.0, gap="medium", scene="park"),
    "obj:hostile": Cue(size_ratio=1.0, gap="far", outfit="dark", scene="night"),
}

# scene: (top colour, bottom colour, texture), RGB; all kept well away from skin tones
SCENES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "office": ((70, 90, 135), (150, 160, 185), "panels"),
    "shop": ((120, 160, 40), (200, 210, 90), "shelves"),
    "home": ((95, 60, 115), (110, 80, 60), "floor"),
    "evening": ((160, 40, 120), (60, 20, 85), "blobs"),
    "park": ((100, 170, 235), (45, 130, 50), "horizon"),
    "night": ((20, 20, 45), (100, 20, 30), "blobs"),
}
TEXTURES: tuple[str, ...] = ("panels", "shelves", "floor", "blobs", "horizon", "stripes", "checker")
SKIN_TONES: tuple[tuple[int, int, int], ...] = ((236, 188, 150), (210, 150, 110), (170, 110, 75), (120, 75, 50))
CLOTHES: tuple[tuple[int, int, int], ...] = (
    (200, 40, 50), (40, 80, 200), (230, 170, 30), (40, 150, 90), (130, 50, 160), (20, 160, 170), (220, 100, 30),
    (90, 90, 90), (170, 40, 110), (60, 60, 140))
OUTFITS: dict[str, tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]] = {  # (A body, B body)
    "suit": ((30, 32, 55), (200, 205, 215)),
    "uniform": (None, (240, 240, 240)),
    "contrast": ((210, 30, 60), (30, 70, 210)),
    "dark": ((30, 30, 30), (35, 30, 30)),
}
GAPS: dict[str, float] = {"close": 0.24, "medium": 0.42, "far": 0.64}  # centre distance, fraction of width
EYE_RADIUS: dict[str, float] = {"big": 0.24, "normal": 0.15, "small": 0.08}  # fraction of head radius
SPLIT_FRACTIONS: tuple[float, float] = (0.15, 0.15)  # val, test
MOTION_SECONDS = 2.0  # a motion cue takes this long to play out; shorter shots show its start


@dataclass(frozen=True)
class Person:
    skin: tuple[int, int, int]
    body: tuple[int, int, int]
    legs: tuple[int, int, int]


@dataclass(frozen=True)
class ShotPlan:
    start: int
    end: int  # exclusive
    cue: Cue
    labels: tuple[str, ...]
    scene: str  # scene name, or "neutral"
    background: np.ndarray  # (H, W, 3) uint8
    mid: float  # x of the midpoint between A and B at the start, pixels
    direction: int  # +1: A left of B and moving right, -1 mirrored
    drift: tuple[float, float]  # neutral shots: how far A and B drift over the shot, pixels
    bystander: tuple[float, float] | None  # (x, height) of a third figure, or None


def synthesize_videos(out: str | Path, num_videos: int = 60, seed: int = 0, width: int = 160, height: int = 120,
                      fps: float = 10.0, seconds: float = 6.0) -> Path:
    """Write `num_videos` labelled videos, their boxes JSON and `manifest.csv` into `out`; return the manifest path."""
    if num_videos < 6:
        raise SyntheticDataError(f"num_videos must be at least 6 (one each for val and test, the rest train), "
                                 f"got {num_videos}")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise SyntheticDataError(f"width and height must be even and at least 32 (yuv420p), got {width}x{height}")
    num_frames = round(seconds * fps)
    if fps <= 0 or num_frames < 3:
        raise SyntheticDataError(f"need at least 3 frames, got fps={fps}, seconds={seconds}")
    out = Path(out)
    for sub in ("videos", "boxes", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    splits = _assign_splits(num_videos, np.random.default_rng(root.spawn(1)[0]))
    rows = []
    for i, child in enumerate(root.spawn(num_videos + 1)[1:]):
        video_id = f"v{i:04d}"
        rng = np.random.default_rng(child)
        labels = draw_labels(rng)
        shots = _plan_shots(rng, labels, num_frames, fps, width, height)
        labels = tuple(name for name in labels if any(name in s.labels for s in shots))  # what is on screen
        tracks = _write_video(out / "videos" / f"{video_id}.mp4", video_id, shots, rng, width, height, fps)
        save_tracks(tracks, out / "boxes" / f"{video_id}.json")
        meta = {"video_id": video_id, "labels": list(labels), "fps": fps, "num_frames": num_frames,
                "cut_frames": [s.start for s in shots[1:]],
                "shots": [{"start": s.start, "end": s.end, "relevant": bool(s.labels), "labels": list(s.labels),
                           "scene": s.scene} for s in shots]}
        (out / "meta" / f"{video_id}.json").write_text(json.dumps(meta, indent=1))
        rows.append({"video_id": video_id, "path": f"videos/{video_id}.mp4", "split": splits[i],
                     "labels": "|".join(labels), "boxes": f"boxes/{video_id}.json"})
        if (i + 1) % 10 == 0 or i + 1 == num_videos:
            print(f"synth videos: {i + 1}/{num_videos} written to {out}", file=sys.stderr, flush=True)
    manifest = out / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest


def _assign_splits(n: int, rng: np.random.Generator) -> list[str]:
    n_val, n_test = (max(1, round(f * n)) for f in SPLIT_FRACTIONS)
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return [names[k] for k in rng.permutation(n)]


def _plan_shots(rng: np.random.Generator, labels: tuple[str, ...], num_frames: int, fps: float, width: int,
                height: int) -> list[ShotPlan]:
    min_len = max(2, round(0.5 * fps))
    max_shots = max(1, num_frames // min_len)
    # relevant shots: one per label of the larger group (each shows one sub and one obj label), at least 1 or 2;
    # never adjacent, so every cut is visible; enough shots for that, as far as the frames allow
    subs = [name for name in labels if name.startswith("sub:")]
    objs = [name for name in labels if name.startswith("obj:")]
    n_relevant = max(len(subs), len(objs), 2 if rng.random() < 0.4 else 1)
    n_shots = min(max(int(rng.integers(3, 6)), 2 * n_relevant - 1), max_shots)
    n_relevant = min(n_relevant, (n_shots + 1) // 2)  # a label that finds no shot is not shown (nor labelled)
    lengths = min_len + rng.multinomial(num_frames - n_shots * min_len, rng.dirichlet(np.full(n_shots, 3.0)))
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    relevant = _nonadjacent(rng, n_shots, n_relevant)
    planted: dict[int, tuple[str, ...]] = {}
    for j, shot in enumerate(relevant):  # a short video with one relevant shot shows the first label of a group
        planted[shot] = tuple(group[j % len(group)] for group in (subs, objs) if group)
    scenes: list[str] = []
    backgrounds: list[np.ndarray | None] = []
    cues: list[Cue] = []
    for k in range(n_shots):
        cue = Cue()
        for name in planted.get(k, ()):
            cue = _merge(cue, CUES[name])
        cues.append(cue)
        scenes.append(cue.scene or "neutral")
        backgrounds.append(_scene(rng, cue.scene, width, height) if cue.scene else None)
    for k in range(n_shots):  # neutral scenes differ clearly from both neighbours
        if backgrounds[k] is None:
            neighbours = [backgrounds[j] for j in (k - 1, k + 1) if 0 <= j < n_shots and backgrounds[j] is not None]
            for _ in range(30):
                candidate = _scene(rng, None, width, height)
                if all(_colour_distance(candidate, b) > 40 for b in neighbours):
                    break
            backgrounds[k] = candidate
    shots = []
    for k in range(n_shots):
        bystander = None
        if rng.random() < 0.3:
            bystander = (float(rng.uniform(0.05, 0.95) * width), float(rng.uniform(0.35, 0.45) * height))
        shots.append(ShotPlan(
            start=bounds[k], end=bounds[k + 1], cue=cues[k], labels=planted.get(k, ()), scene=scenes[k],
            background=backgrounds[k], mid=float(rng.uniform(0.4, 0.6) * width),
            direction=1 if rng.random() < 0.5 else -1,
            drift=(float(rng.uniform(-0.1, 0.1) * width), float(rng.uniform(-0.1, 0.1) * width)),
            bystander=bystander))
    return shots


def _nonadjacent(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """k distinct shots of n, no two adjacent, uniformly among such sets (k <= (n + 1) // 2)."""
    gaps = np.sort(rng.choice(n - k + 1, size=k, replace=False))  # choose k of n - k + 1, then spread them out
    return [int(g) + j for j, g in enumerate(gaps)]


def _merge(base: Cue, other: Cue) -> Cue:
    return replace(base, **{k: v for k, v in vars(other).items() if v is not None and v is not False})


def _colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _scene(rng: np.random.Generator, name: str | None, width: int, height: int) -> np.ndarray:
    """A background (H, W, 3) uint8: a vertical gradient plus a texture; named scenes get a small jitter."""
    if name is not None:
        top, bottom, texture = SCENES[name]
        shift = rng.integers(-12, 13, size=3)
        top_c = np.clip(np.array(top) + shift, 0, 255)
        bottom_c = np.clip(np.array(bottom) + shift, 0, 255)
    else:  # muted colours: random hue, low saturation
        hue = rng.uniform(0, 180)
        top_c, bottom_c = (_hsv_to_rgb(hue + rng.uniform(-15, 15), rng.uniform(20, 90), rng.uniform(60, 230))
                           for _ in range(2))
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = np.broadcast_to((1 - t) * top_c + t * bottom_c, (height, width, 3)).astype(np.float32).copy()
    dark = (image * 0.75).astype(np.uint8)
    image = image.astype(np.uint8)
    horizon = int(height * rng.uniform(0.55, 0.7))
    if texture == "panels":
        for x in range(int(rng.integers(0, 12)), width, max(8, width // 8)):
            cv2.line(image, (x, 0), (x, horizon), dark[0, 0].tolist(), 1)
    elif texture == "shelves":
        for y in range(int(height * 0.15), horizon, max(6, height // 10)):
            cv2.rectangle(image, (0, y), (width - 1, y + 1), dark[y, 0].tolist(), -1)
    elif texture == "floor":
        image[horizon:] = dark[horizon:]
        for x in range(-height, width, max(10, width // 8)):
            cv2.line(image, (x, height - 1), (x + height // 2, horizon), (dark[horizon, 0] * 0.8).tolist(), 1)
    elif texture == "horizon":
        image[horizon:] = np.broadcast_to(np.asarray(bottom_c, np.uint8), image[horizon:].shape)
        image[:horizon] = np.broadcast_to(np.asarray(top_c, np.uint8), image[:horizon].shape)
    elif texture == "blobs":
        for _ in range(6):
            centre = (int(rng.integers(width)), int(rng.integers(horizon)))
            cv2.circle(image, centre, int(rng.integers(4, 14)), dark[centre[1], 0].tolist(), -1, cv2.LINE_AA)
    elif texture == "stripes":
        period = int(rng.integers(8, 20))
        image[:, (np.arange(width) // period) % 2 == 1] = dark[:, (np.arange(width) // period) % 2 == 1]
    elif texture == "checker":
        period = int(rng.integers(10, 24))
        yy, xx = np.mgrid[0:height, 0:width]
        mask = ((yy // period + xx // period) % 2 == 1) & (yy < horizon)
        image[mask] = dark[mask]
    return image


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    pixel = np.array([[[h % 180, np.clip(s, 0, 255), np.clip(v, 0, 255)]]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _positions(shot: ShotPlan, u: float, width: int) -> tuple[float, float]:
    """x of A and B at progress u in [0, 1] through the shot (A leads when moving)."""
    cue, d = shot.cue, shot.direction
    gap = GAPS[cue.gap or "medium"] * width
    mid = shot.mid
    motion = cue.motion
    if motion is None:  # neutral: a slow independent drift
        return mid - d * gap / 2 + u * shot.drift[0], mid + d * gap / 2 + u * shot.drift[1]
    if motion == "still":
        sep = gap
    elif motion == "approach":
        sep = (1 - u) * (gap + 0.3 * width) + u * max(0.16 * width, gap - 0.12 * width)
    elif motion == "apart":
        sep = (1 - u) * max(0.16 * width, gap - 0.12 * width) + u * (gap + 0.3 * width)
    elif motion == "faceoff":
        sep = gap + 0.1 * width * math.sin(2 * math.pi * 2.5 * u)
    elif motion == "push":  # A walks at B, B backs away: the pair slides along
        sep = 0.8 * gap
        mid = mid + d * (u - 0.5) * 0.3 * width
    elif motion in ("chase", "together"):  # both go the same way; chase: B behind A
        sep = (0.7 if motion == "chase" else 0.55) * gap
        mid = mid + d * (u - 0.5) * 0.45 * width
        if motion == "chase":
            return mid + d * sep / 2, mid - d * sep / 2
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return mid - d * sep / 2, mid + d * sep / 2


def _write_video(path: Path, video_id: str, shots: list[ShotPlan], rng: np.random.Generator, width: int,
                 height: int, fps: float) -> Tracks:
    """Render every shot frame by frame into an H.264 mp4; return the boxes of everything drawn."""
    people = [Person(skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], body=CLOTHES[int(c)],
                     legs=(int(rng.integers(20, 110)), int(rng.integers(20, 110)), int(rng.integers(20, 110))))
              for c in rng.choice(len(CLOTHES), size=3, replace=False)]
    tracks = Tracks(video_id=video_id, width=width, height=height, fps=float(fps))
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"threads": "1", "preset": "fast", "qp": "20"}  # one thread, constant QP: same bytes
        for shot in shots:
            cue = shot.cue
            base_h = 0.62 * height * (0.75 if cue.both_small else 1.0)
            ratio = cue.size_ratio if cue.size_ratio is not None else 1.0
            body_a, body_b = people[0].body, people[1].body
            if cue.outfit == "same":
                body_b = body_a
            elif cue.outfit in OUTFITS:
                a, b = OUTFITS[cue.outfit]
                body_a, body_b = a or body_a, b or body_b
            face_a = (cue.mouth or "line", cue.eyes or "normal")
            face_b = ("line", "normal") if cue.motion == "push" else face_a  # push: only the dominant one frowns
            figures_style = [(replace(people[0], body=body_a), base_h, *face_a),
                             (replace(people[1], body=body_b), base_h * ratio, *face_b)]
            span = max(shot.end - shot.start - 1, round(MOTION_SECONDS * fps))  # walking pace, whatever the shot
            for f in range(shot.start, shot.end):
                u = (f - shot.start) / span
                xa, xb = _positions(shot, u, width)
                figures = [(x, *style) for x, style in zip((xa, xb), figures_style, strict=True)]
                if shot.bystander is not None:
                    figures.insert(0, (shot.bystander[0], people[2], shot.bystander[1], "line", "normal"))
                frame = shot.background.copy()
                persons, faces = _draw_figures(frame, figures, height)
                tracks.persons[f] = persons
                tracks.faces[f] = faces
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts = f  # frame index in the stream's 1/fps time base
                for packet in stream.encode(video_frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return tracks


def _draw_figures(frame: np.ndarray, figures: list, frame_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw bodies first, then heads (so no body hides a face); return clipped (persons, faces) boxes (K, 4)."""
    height, width = frame.shape[:2]
    persons, faces, heads = [], [], []
    for x, person, fig_h, mouth, eyes in figures:
        feet = round(0.92 * frame_h)
        box, head = _draw_body(frame, round(x), feet, fig_h, person)
        heads.append((head, person, mouth, eyes))
        persons.append(box)
    for head, person, mouth, eyes in heads:
        faces.append(_draw_head(frame, head, person.skin, mouth, eyes))
    return _clip(persons, width, height), _clip(faces, width, height)


def _draw_body(frame: np.ndarray, cx: int, feet: int, fig_h: float, person: Person) -> tuple[list[float], tuple]:
    """Legs, torso and arms; returns the whole-figure box and the head ellipse (centre, axes)."""
    top = feet - round(fig_h)
    r = max(3, round(0.12 * fig_h))
    head = ((cx, top + r), (max(2, round(0.82 * r)), r))
    torso_top, hip = top + 2 * r, top + round(0.6 * fig_h)
    torso_ax, torso_ay = max(2, round(0.17 * fig_h)), max(2, (hip - torso_top) // 2 + 1)
    torso_c = (cx, (torso_top + hip) // 2 + 1)
    leg_w = max(2, round(0.07 * fig_h))
    swing = round(0.06 * fig_h * math.sin(cx / max(1.0, 0.25 * fig_h) * math.pi))  # legs swing as x changes
    xs, ys = [head[0][0] - head[1][0], head[0][0] + head[1][0] + 1], [top, feet]
    for side in (-1, 1):
        x0 = cx + side * (round(0.08 * fig_h) + swing) - leg_w // 2
        cv2.rectangle(frame, (x0, hip - 2), (x0 + leg_w - 1, feet - 1), person.legs, -1)
        xs += [x0, x0 + leg_w]
    arm = max(2, round(0.05 * fig_h))
    sleeve = tuple(int(0.8 * c) for c in person.body)
    for side in (-1, 1):
        shoulder = (cx + side * (torso_ax - arm // 2), torso_top + arm)
        hand = (cx + side * (torso_ax + round(0.08 * fig_h)), hip + round(0.04 * fig_h))
        cv2.line(frame, shoulder, hand, sleeve, arm, cv2.LINE_AA)
        xs += [hand[0] - arm / 2 - 1, hand[0] + arm / 2 + 1, shoulder[0] - arm / 2 - 1, shoulder[0] + arm / 2 + 1]
        ys += [hand[1] + arm / 2 + 1]
    cv2.ellipse(frame, torso_c, (torso_ax, torso_ay), 0, 0, 360, person.body, -1, cv2.LINE_AA)
    xs += [cx - torso_ax, cx + torso_ax + 1]
    return [min(xs), min(ys), max(xs), max(ys)], head


def _draw_head(frame: np.ndarray, head: tuple, skin: tuple, mouth: str, eyes: str) -> list[float]:
    """A skin ellipse with eyes and a mouth; returns its box [x1, y1, x2, y2]."""
    (cx, cy), (ax, ay) = head
    cv2.ellipse(frame, (cx, cy), (ax, ay), 0, 0, 360, skin, -1, cv2.LINE_AA)
    eye_r = max(1, round(EYE_RADIUS[eyes] * ay))
    for side in (-1, 1):
        centre = (cx + side * max(1, round(0.4 * ax)), cy - max(1, round(0.2 * ay)))
        if eyes == "big":
            cv2.circle(frame, centre, eye_r + 1, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(frame, centre, eye_r, (25, 25, 30), -1, cv2.LINE_AA)
    mx, my = cx, cy + max(1, round(0.45 * ay))
    mw, mh = max(2, round(0.45 * ax)), max(1, round(0.22 * ay))
    dark_red = (120, 20, 30)
    if mouth == "smile":
        cv2.ellipse(frame, (mx, my - mh), (mw, mh), 0, 0, 180, dark_red, 1, cv2.LINE_AA)
    elif mouth == "grin":
        cv2.ellipse(frame, (mx, my - mh // 2), (round(1.2 * mw), mh + 1), 0, 0, 180, (210, 30, 45), -1, cv2.LINE_AA)
    elif mouth == "frown":
        cv2.ellipse(frame, (mx, my + mh // 2), (mw, mh), 0, 180, 360, dark_red, 1, cv2.LINE_AA)
    elif mouth == "open":
        cv2.ellipse(frame, (mx, my), (max(1, mw // 2), mh + 1), 0, 0, 360, (60, 10, 15), -1, cv2.LINE_AA)
    elif mouth == "small":
        cv2.circle(frame, (mx, my), 1, dark_red, -1, cv2.LINE_AA)
    else:  # line: neutral
        cv2.line(frame, (mx - mw, my), (mx + mw, my), dark_red, 1, cv2.LINE_AA)
    return [cx - ax, cy - ay, cx + ax + 1, cy + ay + 1]


def _clip(boxes: list[list[float]], width: int, height: int) -> np.ndarray:
    """(K, 4) float32 boxes clipped to the frame; boxes left with no area are dropped."""
    array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    array[:, 0::2] = np.clip(array[:, 0::2], 0, width)
    array[:, 1::2] = np.clip(array[:, 1::2], 0, height)
    keep = (array[:, 2] - array[:, 0] >= 1) & (array[:, 3] - array[:, 1] >= 1)
    return array[keep]


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")  # skimage.data
PAN_CROP = 0.7  # each shot shows this share of its photograph's width and height, panning across the rest


def write_photo_clip(path: str | Path, shot_frames: list[int], photos: tuple[str, ...] = PHOTOS, width: int = 192,
                     height: int = 144, fps: float = 10.0) -> list[int]:
    """An H.264 clip of len(shot_frames) shots, shot k panning slowly across photograph photos[k] (skimage.data)
    for shot_frames[k] frames, hard cuts between shots. Returns the cut frames (the first frame of each shot after
    the first). One shot: a single-shot clip (a slow pan, no cut)."""
    from skimage import data

    if len(shot_frames) > len(photos) or min(shot_frames, default=0) < 1:
        raise SyntheticDataError(f"shot_frames {shot_frames}: one positive length per photograph, at most "
                                 f"{len(photos)}")
    frames = []
    for name, n in zip(photos, shot_frames, strict=False):
        image = getattr(data, name)()
        image = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        ch, cw = int(h * PAN_CROP), int(w * PAN_CROP)
        for i in range(n):  # the crop window moves left to right over the shot
            x, y = int((w - cw) * i / max(n - 1, 1)), (h - ch) // 2
            frames.append(cv2.resize(image[y:y + ch, x:x + cw, :3], (width, height), interpolation=cv2.INTER_AREA))
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"threads": "1", "preset": "fast", "qp": "20"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return np.cumsum(shot_frames)[:-1].tolist()
