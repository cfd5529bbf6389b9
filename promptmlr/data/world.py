"""A synthetic multi-label world: seeded scenes of coloured shapes, their labels and their captions.

The world exists so that the whole method runs, is tested and is compared offline: a
small CLIP is pretrained contrastively on (scene, caption) pairs from here
(``tools/pretrain_sandbox_clip.py``), and prompt tuning with partial labels is then a real problem
on the same world, with full labels always known so that recovered pseudo-labels can be scored.

Classes
    40 = 5 colours x 8 shapes, named "<colour> <shape>" and indexed colour-major::

        index = COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)

    so 0 "red circle", 1 "red square", ..., 7 "red diamond", 8 "green circle", ..., 39 "purple
    diamond" (:data:`SYNTHETIC_CLASS_NAMES`). Confusion is built in: every class shares its shape
    with 4 classes and its colour with 7.
Scenes
    One of 8 themes (:data:`THEMES`) fixes the background style and 8 preferred classes; each object
    is drawn from the theme's classes with probability :data:`THEME_PROBABILITY`, else from all 40,
    so classes co-occur. A scene holds 1-5 objects (``max_objects``) with a size (small, medium,
    large), rotation, texture fill (solid, striped, dotted) and slightly jittered colour, drawn over a
    cluttered background (gradients, noise, stripes, checks or grids, plus thin lines and blobs in
    muted, non-class colours). Objects may overlap, but every object keeps at least
    :data:`MIN_VISIBLE` of its area visible (checked on a 64x64 raster at layout time), so its label
    is always correct.
Determinism
    ``SyntheticWorld(seed).scene(index)`` draws from ``np.random.default_rng([seed, index])`` only, and
    ``render`` from a seed stored in the scene, so any scene can be built lazily in any process, in
    any order, at any resolution. Test images use indices from :data:`TEST_INDEX_OFFSET` upwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "heart", "diamond")
SYNTHETIC_CLASS_NAMES: list[str] = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
NUM_CLASSES = len(SYNTHETIC_CLASS_NAMES)

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 75, 215),
    "yellow": (235, 205, 30), "purple": (145, 50, 190),
}
SIZES: dict[str, tuple[float, float]] = {  # object radius as a fraction of the image side
    "small": (0.085, 0.115), "medium": (0.125, 0.16), "large": (0.17, 0.21),
}
TEXTURES = ("solid", "striped", "dotted")
MAX_ROTATION = {"circle": 0.0, "ring": 0.0}  # degrees either way; other shapes use DEFAULT_ROTATION
DEFAULT_ROTATION = 30.0  # keeps a square from turning into a diamond (an elongated rhombus)


def class_index(colour: str, shape: str) -> int:
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


@dataclass(frozen=True)
class Theme:
    name: str
    background: str
    classes: tuple[str, ...]
    dark: bool = False  # darker background palette


THEMES: tuple[Theme, ...] = (
    Theme("night sky", "gradient", ("yellow star", "blue star", "purple star", "yellow circle",
                                    "blue circle", "purple diamond", "yellow diamond", "blue ring"), dark=True),
    Theme("garden", "noise", ("green heart", "red heart", "green star", "yellow circle", "red circle",
                              "green triangle", "purple heart", "green ring")),
    Theme("playroom", "checker", ("red square", "blue square", "yellow square", "red triangle",
                                  "blue triangle", "green square", "yellow triangle", "red circle")),
    Theme("clinic", "grid", ("red cross", "green cross", "blue cross", "red heart", "blue ring",
                             "green ring", "blue heart", "purple cross")),
    Theme("jewellery", "stripes", ("purple diamond", "blue diamond", "red diamond", "green diamond",
                                   "yellow ring", "purple ring", "red heart", "yellow star")),
    Theme("road", "stripes", ("red triangle", "yellow triangle", "blue circle", "red circle",
                              "green circle", "yellow diamond", "blue square", "red square"), dark=True),
    Theme("ocean", "gradient", ("blue circle", "blue ring", "green ring", "blue star", "yellow star",
                                "purple circle", "green diamond", "blue heart")),
    Theme("party", "noise", ("purple star", "red star", "green star", "yellow heart", "purple heart",
                             "blue heart", "purple cross", "yellow cross")),
)
THEME_PROBABILITY = 0.75  # chance an object comes from its scene's theme rather than all classes
MIN_VISIBLE = 0.5  # fraction of each object's area that must stay unoccluded
TEST_INDEX_OFFSET = 1 << 31  # test scene i is scene(TEST_INDEX_OFFSET + i); train scene i is scene(i)
_LAYOUT_GRID = 64  # raster on which occlusion is checked, whatever the render size
_SUPERSAMPLE = 2  # render at this multiple of the target size, then box-filter down (anti-aliasing)


@dataclass(frozen=True)
class SceneObject:
    """One object: its class, centre ``(x, y)`` and radius in image fractions (y grows downwards),
    rotation in degrees, texture, size word and colour (class colour with a small jitter)."""

    colour: str
    shape: str
    x: float
    y: float
    radius: float
    rotation: float
    texture: str
    size: str
    rgb: tuple[int, int, int]
    texture_angle: float
    texture_period: float

    @property
    def class_name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def class_index(self) -> int:
        return class_index(self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    """A scene: its index, theme, objects in drawing order (later ones on top), background style and
    the seed its pixels are drawn from."""

    index: int
    theme: str
    background: str
    dark: bool
    objects: tuple[SceneObject, ...]
    render_seed: int
    mirrored: bool = False

    def mirror(self) -> "Scene":
        """The same scene flipped left-right (positions and rotations mirrored), for augmentation:
        render and caption both follow, so "left of" stays true."""
        objects = tuple(replace(o, x=1.0 - o.x, rotation=-o.rotation, texture_angle=-o.texture_angle)
                        for o in self.objects)
        return replace(self, objects=objects, mirrored=not self.mirrored)


# --------------------------------------------------------------------------------- shape geometry
def _unit_polygon(shape: str) -> list[np.ndarray]:
    """Outline(s) of a shape of radius 1 centred at the origin; a second outline is a hole."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return [np.stack([np.cos(t), np.sin(t)], 1)]
    if shape == "ring":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        circle = np.stack([np.cos(t), np.sin(t)], 1)
        return [circle, 0.55 * circle]
    if shape == "square":
        s = 0.8
        return [np.array([[-s, -s], [s, -s], [s, s], [-s, s]])]
    if shape == "triangle":
        t = np.array([-90, 30, 150]) * np.pi / 180
        return [np.stack([np.cos(t), np.sin(t) + 0.2], 1)]
    if shape == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([r * np.cos(t), r * np.sin(t) + 0.08], 1)]
    if shape == "cross":
        a, b = 0.3, 0.9
        return [np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                          [-a, a], [-b, a], [-b, -a], [-a, -a]])]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x, y + 2.5], 1) / 16.5]
    if shape == "diamond":
        return [np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])]
    raise ValueError(f"unknown shape {shape!r}")


_UNIT_POLYGONS = {shape: _unit_polygon(shape) for shape in SHAPES}


def _object_polygons(obj: SceneObject, size: int) -> list[list[tuple[float, float]]]:
    angle = math.radians(obj.rotation)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([obj.x, obj.y]) * size
    return [[tuple(p) for p in (outline @ rotation.T) * obj.radius * size + centre]
            for outline in _UNIT_POLYGONS[obj.shape]]


def object_mask(obj: SceneObject, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of the object's pixels (ignoring occlusion)."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    outer, *holes = _object_polygons(obj, size)
    draw.polygon(outer, fill=255)
    for hole in holes:
        draw.polygon(hole, fill=0)
    return np.asarray(image) > 127


def visible_parts(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each object mask (in drawing order) less what the masks drawn after it cover: what shows."""
    if not masks:
        return []
    covered = np.zeros_like(masks[0])
    visible = [covered] * len(masks)
    for i in range(len(masks) - 1, -1, -1):
        visible[i] = masks[i] & ~covered
        covered = covered | masks[i]
    return visible


def visible_fractions(objects: Sequence[SceneObject], size: int = _LAYOUT_GRID) -> list[float]:
    """Fraction of each object's area not covered by objects drawn after it."""
    masks = [object_mask(o, size) for o in objects]
    return [float(part.sum() / max(mask.sum(), 1)) for mask, part in zip(masks, visible_parts(masks))]


# ----------------------------------------------------------------------------------------- world
class SyntheticWorld:
    """The seeded world: ``scene(index)``, ``render(scene)``, ``labels(scene)``, ``caption(scene, rng)``.

    ``max_objects`` (1-5) bounds objects per scene; ``image_size`` is the default render size.
    """

    def __init__(self, seed: int = 0, image_size: int = 128, max_objects: int = 5):
        if not 1 <= max_objects <= 5:
            raise ValueError(f"max_objects must be in 1..5, got {max_objects}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.max_objects = int(max_objects)
        weights = np.array([0.22, 0.26, 0.24, 0.16, 0.12][:max_objects])
        self._count_weights = weights / weights.sum()

    # -------------------------------------------------------------------------------- layout
    def scene(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, int(index)])
        theme = THEMES[rng.integers(len(THEMES))]
        count = 1 + int(rng.choice(len(self._count_weights), p=self._count_weights))
        objects: list[SceneObject] = []
        for _ in range(count):
            for _attempt in range(12):
                candidate = self._random_object(rng, theme)
                if min(visible_fractions([*objects, candidate])) >= MIN_VISIBLE:
                    objects.append(candidate)
                    break
        return Scene(int(index), theme.name, theme.background, theme.dark, tuple(objects),
                     int(rng.integers(1 << 62)))

    @staticmethod
    def _random_object(rng: np.random.Generator, theme: Theme) -> SceneObject:
        if rng.random() < THEME_PROBABILITY:
            name = theme.classes[rng.integers(len(theme.classes))]
        else:
            name = SYNTHETIC_CLASS_NAMES[rng.integers(NUM_CLASSES)]
        colour, shape = name.split(" ")
        size = ("small", "medium", "large")[rng.integers(3)]
        radius = float(rng.uniform(*SIZES[size]))
        margin = radius + 0.01
        limit = MAX_ROTATION.get(shape, DEFAULT_ROTATION)
        jitter = rng.uniform(0.85, 1.1) * np.array(COLOUR_RGB[colour]) + rng.integers(-18, 19, 3)
        return SceneObject(
            colour=colour, shape=shape,
            x=float(rng.uniform(margin, 1 - margin)), y=float(rng.uniform(margin, 1 - margin)),
            radius=radius, rotation=float(rng.uniform(-limit, limit)),
            texture=TEXTURES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))], size=size,
            rgb=tuple(int(c) for c in np.clip(jitter, 0, 255)),
            texture_angle=float(rng.uniform(0, 180)), texture_period=float(rng.uniform(0.25, 0.45)))

    def labels(self, scene: Scene) -> np.ndarray:
        """0/1 vector ``[40]``: which classes appear in the scene (in class-index order)."""
        labels = np.zeros(NUM_CLASSES, np.int64)
        for obj in scene.objects:
            labels[obj.class_index] = 1
        return labels

    # -------------------------------------------------------------------------------- pixels
    def render(self, scene: Scene, image_size: int | None = None) -> Image.Image:
        """The scene as an RGB image of side ``image_size`` (default: the world's)."""
        return Image.fromarray(self.render_array(scene, image_size))

    def render_array(self, scene: Scene, image_size: int | None = None) -> np.ndarray:
        """The scene as a ``uint8 [H, W, 3]`` array."""
        out_size = int(image_size or self.image_size)
        if scene.mirrored:  # exactly the original's pixels, flipped left-right
            return np.ascontiguousarray(self.render_array(scene.mirror(), out_size)[:, ::-1])
        size = out_size * _SUPERSAMPLE
        rng = np.random.default_rng(scene.render_seed)
        canvas = _background(rng, scene.background, scene.dark, size)
        for obj in scene.objects:
            mask = object_mask(obj, size)
            fill = _object_fill(obj, size)
            canvas[mask] = fill[mask]
        canvas += rng.normal(0, 6, canvas.shape).astype(np.float32)  # sensor noise
        array = np.clip(canvas, 0, 255).astype(np.uint8)
        image = Image.fromarray(array).reduce(_SUPERSAMPLE)
        return np.asarray(image)

    # ------------------------------------------------------------------------------ captions
    def caption(self, scene: Scene, rng: np.random.Generator) -> str:
        """A varied English description of the scene that names every object's class."""
        return describe_scene(scene, rng)


# ------------------------------------------------------------------------------------ background
def _muted(rng: np.random.Generator, dark: bool) -> np.ndarray:
    """A low-saturation colour: a grey with a faint tint (never one of the class colours)."""
    grey = rng.uniform(40, 110) if dark else rng.uniform(120, 215)
    return np.clip(grey + rng.uniform(-16, 16, 3), 0, 255).astype(np.float32)


def _background(rng: np.random.Generator, style: str, dark: bool, size: int) -> np.ndarray:
    a, b = _muted(rng, dark), _muted(rng, dark)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if style == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif style == "noise":
        cells = int(rng.integers(4, 9))
        coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        t = np.asarray(coarse.resize((size, size), Image.BILINEAR), np.float32) / 255
    elif style == "stripes":
        t = (np.sin(2 * np.pi * u / rng.uniform(0.06, 0.14)) > 0).astype(np.float32)
    elif style == "checker":
        cell = rng.uniform(0.08, 0.16)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    elif style == "grid":
        cell, width = rng.uniform(0.08, 0.15), 0.012
        t = (((xx % cell) < width) | ((yy % cell) < width)).astype(np.float32)
    else:
        raise ValueError(f"unknown background style {style!r}")
    canvas = a + t[..., None] * (b - a)
    canvas += rng.normal(0, 10, (size, size, 1)).astype(np.float32)  # grain
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):  # clutter: thin lines
        points = [tuple(p) for p in rng.uniform(0, size, (2, 2))]
        draw.line(points, fill=tuple(int(c) for c in _muted(rng, not dark)), width=max(1, size // 64))
    for _ in range(int(rng.integers(1, 5))):  # clutter: small blobs
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.02, 0.06, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(int(c) for c in _muted(rng, not dark)))
    return np.asarray(image, np.float32).copy()


def _object_fill(obj: SceneObject, size: int) -> np.ndarray:
    """The object's colour and texture over the whole canvas (masked by the caller)."""
    colour = np.array(obj.rgb, np.float32)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = colour
    if obj.texture == "solid":
        return canvas
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) / size - np.array([obj.y, obj.x])[:, None, None])
    angle = math.radians(obj.texture_angle)
    period = obj.texture_period * obj.radius
    shade = colour * 0.55 if colour.mean() > 110 else np.minimum(colour * 1.6 + 40, 255)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if obj.texture == "striped":
        pattern = (u / period) % 1.0 < 0.45
    else:  # dotted
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        pattern = du * du + dv * dv < 0.07
    canvas[pattern] = shade
    return canvas


# -------------------------------------------------------------------------------------- captions
COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS}
COLOUR_WORDS["purple"] = ("purple", "violet")
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "ring": (("ring", "rings"), ("hoop", "hoops")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "heart": (("heart", "hearts"),),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("", "", "medium-sized"), "large": ("large", "big")}
TEXTURE_WORDS = {"solid": ("", "", "", "plain"), "striped": ("striped",), "dotted": ("dotted", "spotted")}
BACKGROUND_WORDS = {"gradient": ("gradient", "smooth"), "noise": ("noisy", "blotchy"),
                    "stripes": ("striped", "stripy"), "checker": ("checkered", "tiled"), "grid": ("grid", "gridded")}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")
CANONICAL_PROBABILITY = 0.7  # chance a caption uses the class's own words (those prompts use)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _phrase(rng: np.random.Generator, group: list[SceneObject], article: bool = True) -> str:
    """Noun phrase for one or more objects of the same class, e.g. "a small striped red star"."""
    first = group[0]
    canonical = rng.random() < CANONICAL_PROBABILITY
    colour = first.colour if canonical else _pick(rng, COLOUR_WORDS[first.colour])
    singular, plural = SHAPE_WORDS[first.shape][0] if canonical else _pick(rng, SHAPE_WORDS[first.shape])
    if len(group) == 1:
        words = [_pick(rng, SIZE_WORDS[first.size]) if rng.random() < 0.6 else "",
                 _pick(rng, TEXTURE_WORDS[first.texture]) if rng.random() < 0.6 else "", colour, singular]
        body = " ".join(w for w in words if w)
        return f"{'an' if body[0] in 'aeiou' else 'a'} {body}" if article else body
    texture = _pick(rng, TEXTURE_WORDS[first.texture]) if len({o.texture for o in group}) == 1 else ""
    count = NUMBER_WORDS[len(group)] if rng.random() < 0.8 else "some"
    return " ".join(w for w in (count, texture if rng.random() < 0.5 else "", colour, plural) if w)


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dy) > abs(dx):
        return "above" if dy > 0 else "below"
    return "to the left of" if dx > 0 else "to the right of"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming every object's class once (same-class objects are counted together), with
    varied templates, synonyms, sizes, textures, a spatial relation and the background."""
    groups: dict[str, list[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault(obj.class_name, []).append(obj)
    order = [groups[k] for k in (list(groups)[i] for i in rng.permutation(len(groups)))]
    background = f"on a {_pick(rng, BACKGROUND_WORDS[scene.background])} background"
    with_background = rng.random() < 0.5
    singles = [g for g in order if len(g) == 1]
    if len(singles) >= 2 and rng.random() < 0.4:  # a spatial relation between two single objects
        a, b = singles[0], singles[1]
        rest = [g for g in order if g is not a and g is not b]
        relation = f"{_phrase(rng, a)} {_relation(a[0], b[0])} {_phrase(rng, b)}"
        body = relation if not rest else relation + ", with " + _join([_phrase(rng, g) for g in rest])
    else:
        body = _join([_phrase(rng, g) for g in order])
    n = len(scene.objects)
    templates = ["a photo of {b}", "{b}", "an image of {b}", "a picture showing {b}", "a drawing of {b}",
                 "there is {b}", f"{NUMBER_WORDS[n]} object{'s' if n > 1 else ''}: {{b}}"]
    caption = _pick(rng, templates).format(b=body)
    if with_background:
        caption += " " + background
    return caption + ("." if rng.random() < 0.7 else "")


# ----------------------------------------------------------------------------------- the dataset


def write_scene_files(out: Path, split: str, offset: int, start: int, stop: int, seed: int,
                      image_size: int) -> list[list]:
    """Render scenes ``offset + start`` .. ``offset + stop - 1`` of world ``seed`` as
    ``out/<split>/<i:06d>.png`` and return their CSV rows (image, then 1/-1 per class). Here rather
    than in :mod:`promptmlr.data.synthetic`, so that the processes that run it import no PyTorch."""
    world = SyntheticWorld(seed, image_size)
    rows = []
    for i in range(start, stop):
        scene = world.scene(offset + i)
        name = f"{split}/{i:06d}.png"
        world.render(scene).save(out / name)
        rows.append([name, *(1 if v else -1 for v in world.labels(scene))])
    return rows
