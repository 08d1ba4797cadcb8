"""Speaker looks built from real face photographs that ship inside installed packages.

Sources: scikit-image's `astronaut` (Eileen Collins), matplotlib's `grace_hopper.jpg`
sample, and the 100 face crops of scikit-image's `lfw_subset` (25x25 grayscale, upscaled
and tinted to a skin tone). Each photo's face box is found once with dlib's HOG detector
(the project's offline detector), the mouth is placed from that box, and the original
mouth is inpainted away so the synthetic mouth (mouth.py) is the only one visible.

A `Look` (drawn per speaker from a seed) names a photo and varies mirroring, colour and
lighting, background, face size and position, and slow head motion over time.
`render_head(look, t, size)` gives one BGR frame without a mouth plus where to draw it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.errors import LipsyncError

# Where the mouth sits inside dlib's frontal face box (fractions of the box); checked
# by eye on the astronaut, Grace Hopper and several LFW faces.
MOUTH_Y = 0.79
MOUTH_WIDTH = 0.38
LFW_UPSCALE = 160  # lfw crops are 25x25; upscale before detection and use


@dataclass(frozen=True)
class FacePhoto:
    """A head image (BGR, mouth removed), its soft alpha mask, and face geometry."""

    name: str
    image: np.ndarray          # (h, w, 3) uint8 BGR, original mouth inpainted
    alpha: np.ndarray          # (h, w) float32 0..1, where the head layer shows
    face_box: tuple[float, float, float, float]   # dlib box in image coordinates
    mouth: tuple[float, float]                     # mouth centre in image coordinates
    mouth_width: float
    grayscale: bool            # lfw faces: tinted to a skin tone per speaker


def _detect_largest(image_bgr: np.ndarray):
    detector = dlib_detector()
    rects = detector(np.ascontiguousarray(image_bgr[:, :, ::-1]), 0)
    if len(rects) == 0:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return float(r.left()), float(r.top()), float(r.right()), float(r.bottom())


@functools.lru_cache(maxsize=1)
def dlib_detector():
    """dlib's frontal HOG face detector (building it takes about a second, so once)."""
    import dlib

    return dlib.get_frontal_face_detector()


def _soft_ellipse(h: int, w: int, center, axes, feather: float) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (int(center[0]), int(center[1])), (int(axes[0]), int(axes[1])), 0, 0, 360, 1.0, -1)
    k = int(feather) | 1
    return cv2.GaussianBlur(mask, (k, k), 0)


def _remove_mouth(image: np.ndarray, mouth, mouth_width: float) -> np.ndarray:
    mask = np.zeros(image.shape[:2], np.uint8)
    cx, cy = mouth
    cv2.ellipse(mask, (int(cx), int(cy)), (int(mouth_width * 0.75), int(mouth_width * 0.5)), 0, 0, 360, 255, -1)
    return cv2.inpaint(image, mask, 5, cv2.INPAINT_TELEA)


def _photo_from_image(name: str, image: np.ndarray, grayscale: bool, margin: float) -> FacePhoto | None:
    box = _detect_largest(image)
    if box is None:
        return None
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # Square crop around the face with a margin for hair, ears and chin.
    half = max(bw, bh) * margin / 2
    h, w = image.shape[:2]
    pad = int(math.ceil(half)) + 2
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    ox, oy = int(round(cx - half)) + pad, int(round(cy - half)) + pad
    size = int(round(2 * half))
    crop = padded[oy:oy + size, ox:ox + size].copy()
    shift_x, shift_y = ox - pad, oy - pad
    face_box = (x1 - shift_x, y1 - shift_y, x2 - shift_x, y2 - shift_y)
    mouth = ((face_box[0] + face_box[2]) / 2, face_box[1] + MOUTH_Y * bh)
    mouth_width = MOUTH_WIDTH * bw
    crop = _remove_mouth(crop, mouth, mouth_width)
    fcx, fcy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    if grayscale:
        # Tight lfw crops: the whole crop is face; fade only its outer border.
        alpha = _soft_ellipse(size, size, (size / 2, size / 2), (size * 0.56, size * 0.62), size * 0.12)
        alpha = np.maximum(alpha, _soft_ellipse(size, size, (fcx, fcy), (bw * 0.6, bh * 0.68), size * 0.06))
    else:
        alpha = _soft_ellipse(size, size, (fcx, fcy + bh * 0.05), (bw * 0.78, bh * 1.0), size * 0.08)
    return FacePhoto(name, crop, alpha.astype(np.float32), face_box, mouth, mouth_width, grayscale)


PHOTO_NAMES = ("astronaut", "grace_hopper") + tuple(f"lfw_{i:03d}" for i in range(100))


@functools.lru_cache(maxsize=None)
def load_face_photo(name: str) -> FacePhoto | None:
    """The named face photo prepared for rendering, or None if dlib cannot find its face.

    Names: "astronaut", "grace_hopper", "lfw_000" .. "lfw_099" (see PHOTO_NAMES).
    """
    import skimage.data

    if name == "astronaut":
        return _photo_from_image(name, np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1]),
                                 grayscale=False, margin=1.9)
    if name == "grace_hopper":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise LipsyncError(f"cannot read matplotlib sample photo {path}")
        return _photo_from_image(name, image, grayscale=False, margin=1.9)
    if name.startswith("lfw_"):
        index = int(name[4:])
        if not 0 <= index < 100:  # lfw_subset: the first 100 images are faces, the rest are not
            raise LipsyncError(f"unknown face photo {name!r}")
        face = skimage.data.lfw_subset()[index]
        gray = cv2.resize((np.clip(face, 0, 1) * 255).astype(np.uint8), (LFW_UPSCALE, LFW_UPSCALE),
                          interpolation=cv2.INTER_CUBIC)
        return _photo_from_image(name, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), grayscale=True, margin=1.25)
    raise LipsyncError(f"unknown face photo {name!r}")


@dataclass(frozen=True)
class Look:
    """Everything that makes one speaker look different from another."""

    photo: str                        # a name from PHOTO_NAMES
    mirror: bool
    face_frac: float                  # face box width / frame width
    offset: tuple[float, float]       # face centre offset, fraction of frame size
    colour_gain: tuple[float, float, float]   # per-channel BGR gain (skin tint for grayscale photos)
    brightness: float
    background: tuple[tuple[int, int, int], tuple[int, int, int]]   # gradient end colours (BGR)
    background_angle: float
    motion_amp: tuple[float, float, float]     # translation x, y (fraction of frame), rotation (deg)
    motion_freq: tuple[float, float, float]    # Hz
    motion_phase: tuple[float, float, float]

    @staticmethod
    def random(rng: np.random.Generator, photo: str, grayscale: bool) -> "Look":
        if grayscale:
            skin = np.array([0.62, 0.78, 1.0]) * rng.uniform(0.72, 1.05)   # BGR: warm skin tones
            gain = tuple(float(g) for g in np.clip(skin + rng.normal(0, 0.04, 3), 0.2, 1.3))
        else:
            gain = tuple(float(g) for g in rng.uniform(0.9, 1.1, 3))
        c1 = tuple(int(c) for c in rng.integers(20, 236, 3))
        c2 = tuple(int(c) for c in rng.integers(20, 236, 3))
        return Look(
            photo=photo,
            mirror=bool(rng.random() < 0.5),
            face_frac=float(rng.uniform(0.56, 0.66)),
            offset=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.04))),
            colour_gain=gain,
            brightness=float(rng.uniform(-18, 18)),
            background=(c1, c2),
            background_angle=float(rng.uniform(0, 2 * math.pi)),
            motion_amp=(float(rng.uniform(0.005, 0.02)), float(rng.uniform(0.004, 0.015)),
                        float(rng.uniform(0.8, 3.0))),
            motion_freq=tuple(float(f) for f in rng.uniform(0.15, 0.6, 3)),
            motion_phase=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 3)),
        )


@dataclass
class HeadFrame:
    """One rendered frame (no mouth yet) and where the mouth goes in it."""

    image: np.ndarray          # (H, W, 3) uint8 BGR
    mouth: tuple[float, float]
    mouth_width: float
    angle_deg: float
    face_box: tuple[float, float, float, float]   # approximate, frame coordinates


class HeadRenderer:
    """Renders one speaker's head at any time t; precomputes what does not move."""

    def __init__(self, look: Look, size: tuple[int, int], photo: FacePhoto | None = None):
        self.look = look
        self.width, self.height = size
        photo = photo if photo is not None else load_face_photo(look.photo)
        if photo is None or photo.name != look.photo:
            raise LipsyncError(f"face photo {look.photo!r} is not usable")
        image, alpha = photo.image, photo.alpha
        face_box, mouth = photo.face_box, photo.mouth
        if look.mirror:
            w = image.shape[1]
            image, alpha = image[:, ::-1], alpha[:, ::-1]
            face_box = (w - face_box[2], face_box[1], w - face_box[0], face_box[3])
            mouth = (w - mouth[0], mouth[1])
        # Scale the photo once (area filter) so per-frame warps are small and cheap.
        scale = look.face_frac * self.width / (face_box[2] - face_box[0])
        new_size = (max(1, int(round(image.shape[1] * scale))), max(1, int(round(image.shape[0] * scale))))
        image = cv2.resize(np.ascontiguousarray(image), new_size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(np.ascontiguousarray(alpha), new_size, interpolation=cv2.INTER_AREA)
        sx, sy = new_size[0] / photo.image.shape[1], new_size[1] / photo.image.shape[0]
        self.face_box = tuple(v * s for v, s in zip(face_box, (sx, sy, sx, sy)))
        self.mouth = (mouth[0] * sx, mouth[1] * sy)
        self.mouth_width = photo.mouth_width * sx
        img = image.astype(np.float32)
        if photo.grayscale:
            # Lift the blacks of the lfw crops so skin stays clearly lighter than the open mouth.
            img = 60.0 + img * (195.0 / 255.0)
        img = img * np.array(look.colour_gain, np.float32) + look.brightness
        self.head = np.clip(img, 0, 255)
        self.alpha = alpha
        self.background = self._background()
        fx = (self.face_box[0] + self.face_box[2]) / 2
        fy = (self.face_box[1] + self.face_box[3]) / 2
        self.face_center = (fx, fy)
        self.target = (self.width * (0.5 + look.offset[0]), self.height * (0.5 + look.offset[1]))

    def _background(self) -> np.ndarray:
        look = self.look
        ys, xs = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        direction = math.cos(look.background_angle) * xs / self.width + math.sin(look.background_angle) * ys / self.height
        t = (direction - direction.min()) / max(1e-6, float(direction.max() - direction.min()))
        c1, c2 = (np.array(c, np.float32) for c in look.background)
        return (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32)

    def pose(self, t: float) -> tuple[float, float, float]:
        """Head translation (px) and rotation (deg) at time t: slow, smooth sway."""
        a, f, p = self.look.motion_amp, self.look.motion_freq, self.look.motion_phase
        dx = a[0] * self.width * math.sin(2 * math.pi * f[0] * t + p[0])
        dy = a[1] * self.height * math.sin(2 * math.pi * f[1] * t + p[1])
        angle = a[2] * math.sin(2 * math.pi * f[2] * t + p[2])
        return dx, dy, angle

    def render(self, t: float) -> HeadFrame:
        return self.render_pose(*self.pose(t))

    def extreme_poses(self) -> list[tuple[float, float, float]]:
        """The corners of the pose range `pose(t)` can reach (for checking detectability)."""
        a = self.look.motion_amp
        ax, ay = a[0] * self.width, a[1] * self.height
        return [(sx * ax, sy * ay, sr * a[2]) for sx in (-1, 1) for sy in (-1, 1) for sr in (-1, 1)]

    def render_pose(self, dx: float, dy: float, angle: float) -> HeadFrame:
        # Rotate about the face centre, then move the face centre to its target.
        m = cv2.getRotationMatrix2D(self.face_center, angle, 1.0)
        m[0, 2] += self.target[0] + dx - self.face_center[0]
        m[1, 2] += self.target[1] + dy - self.face_center[1]
        size = (self.width, self.height)
        head = cv2.warpAffine(self.head, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self.alpha, m, size, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
        frame = head * alpha + self.background * (1 - alpha)
        mouth = m @ np.array([self.mouth[0], self.mouth[1], 1.0])
        corners = np.array([[self.face_box[0], self.face_box[1], 1], [self.face_box[2], self.face_box[3], 1]]) @ m.T
        return HeadFrame(
            image=np.clip(frame + 0.5, 0, 255).astype(np.uint8),
            mouth=(float(mouth[0]), float(mouth[1])),
            mouth_width=self.mouth_width,
            angle_deg=angle,
            face_box=(float(corners[0, 0]), float(corners[0, 1]), float(corners[1, 0]), float(corners[1, 1])),
        )
