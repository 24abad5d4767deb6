"""Real objects with their true silhouettes, cut from one dev pair and pasted into another's guide.

Why: CMSR's promise is that what only the RGB shows (a person who is not in the thermal frame, a
poster, a tree) is not drawn into the target. A square patch does not test that: its straight
edges line up with nothing, while a real silhouette has the scene's own scale, colours and
curved outline. This module makes such guides, deterministically, from the dev pairs:

* **people** are the warm regions of a thermal pair's ground truth: inside a hand-placed box
  around one person (written down in :data:`DONORS`), pixels that differ from their row's
  background (the box's outer columns) by :data:`PERSON_CONTRAST` grey levels, opened, closed,
  holes filled, largest component.
  The RGB is cut from the pair's guide *after registering it to the thermal* (ULB17-VT pairs
  are 5-7 px apart), so silhouette and colours belong together;
* **objects from the EPFL guides** (a poster, a tree) by a colour mask in a box: saturated pixels
  for a poster on a grey wall, dark pixels for a tree against the sky.

The draws (:data:`DRAWS`) are fixed: host pair, donor, the object's height as a fraction of the
host's height and where its foot stands. Half of them are split ``A`` (fit a knob on these), the
other half ``B`` (confirm on these), alternating, so both halves cover both modalities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

#: a person's pixels differ by this many grey levels from their row's background in the thermal truth
PERSON_CONTRAST = 18.0
#: saturation (max - min of RGB in [0, 1]) above which a pixel belongs to a poster
POSTER_SATURATION = 0.18
#: brightness (mean RGB in [0, 1]) below which a pixel belongs to a tree against the sky
TREE_DARKNESS = 0.22
#: pasted objects stay this far (HR px) from the border (the benchmark's regions must be interior)
BORDER = 16


@dataclass(frozen=True)
class Donor:
    """Where one object is cut: dataset/scene, how the mask is made, and the box (HR px) it is in."""

    name: str
    dataset: str
    scene: str
    kind: str  # "person" (hot in the thermal truth) | "poster" (saturated) | "tree" (dark)
    box: tuple[int, int, int, int]  # y0, y1, x0, x1


@dataclass(frozen=True)
class Draw:
    """One pasted object: the host pair, the donor, its height as a fraction of the host's height,
    and its foot (bottom centre) as fractions of the host's height and width."""

    index: int
    host_dataset: str
    host_scene: str
    donor: str
    height: float
    foot_y: float
    foot_x: float

    @property
    def split(self) -> str:
        """``A`` (fit) or ``B`` (confirm), alternating."""
        return "A" if self.index % 2 == 0 else "B"


THERMAL = "ulb17vt_thermal_x4"
NIR = "epfl_rgbnir_x4"

DONORS: dict[str, Donor] = {d.name: d for d in (
    Donor("walker_086", THERMAL, "086", "person", (115, 185, 85, 120)),
    Donor("runner_086", THERMAL, "086", "person", (120, 180, 245, 282)),
    Donor("cyclist_157", THERMAL, "157", "person", (90, 188, 140, 212)),
    Donor("hiker_196", THERMAL, "196", "person", (125, 178, 168, 196)),
    Donor("pair_259", THERMAL, "259", "person", (95, 202, 140, 202)),
    Donor("man_277", THERMAL, "277", "person", (50, 136, 240, 280)),
    Donor("man_371", THERMAL, "371", "person", (60, 215, 145, 196)),
    Donor("poster_indoor", NIR, "indoor_0001", "poster", (68, 208, 60, 136)),
    Donor("tree_mountain", NIR, "mountain_0017", "tree", (180, 340, 20, 105)),
)}

_PEOPLE = ["walker_086", "runner_086", "cyclist_157", "hiker_196", "pair_259", "man_277", "man_371"]
_THERMAL_SCENES = ["006", "036", "064", "086", "128", "157", "173", "196", "239", "259", "277", "310", "334",
                   "353", "371", "381"]


def _draw_list() -> tuple[Draw, ...]:
    """The fixed list: every thermal scene gets a person cut from another scene (the next donor
    whose scene differs), four also get an EPFL object; the NIR scenes get people, as the paper's
    own test pastes a person into an indoor NIR guide."""
    rows: list[tuple[str, str, str, float, float, float]] = []
    feet_x = (0.3, 0.7, 0.5, 0.2, 0.8, 0.4, 0.6, 0.35)
    for k, scene in enumerate(_THERMAL_SCENES):
        donor = next(d for j in range(len(_PEOPLE)) if DONORS[d := _PEOPLE[(k + j) % len(_PEOPLE)]].scene != scene)
        rows.append((THERMAL, scene, donor, 0.32 + 0.04 * (k % 4), 0.86, feet_x[k % len(feet_x)]))
    for scene, donor, h, fx in (("006", "poster_indoor", 0.25, 0.62), ("173", "tree_mountain", 0.45, 0.25),
                                ("239", "poster_indoor", 0.25, 0.4), ("334", "tree_mountain", 0.45, 0.7)):
        rows.append((THERMAL, scene, donor, h, 0.9, fx))
    for donor, fx, h in (("walker_086", 0.45, 0.55), ("man_371", 0.8, 0.6), ("cyclist_157", 0.25, 0.5),
                         ("pair_259", 0.6, 0.45)):
        rows.append((NIR, "indoor_0001", donor, h, 0.9, fx))
    for donor, fx in (("man_277", 0.3), ("hiker_196", 0.75)):
        rows.append((NIR, "mountain_0017", donor, 0.4, 0.92, fx))
    return tuple(Draw(i, *r) for i, r in enumerate(rows))


DRAWS: tuple[Draw, ...] = _draw_list()


def read_pair(data: Path, dataset: str, scene: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr (h, w), guide (H, W, 3), gt (H, W)) as float32 in grey levels (0..255)."""
    from PIL import Image

    def band(path: Path) -> np.ndarray:
        a = np.asarray(Image.open(path), dtype=np.float32)
        return a[..., 0] if a.ndim == 3 else a

    folder = data / dataset
    guide = np.asarray(Image.open(folder / f"{scene}_guide.png"), dtype=np.float32)[..., :3]
    return band(folder / f"{scene}_lr.png"), guide, band(folder / f"{scene}_gt.png")


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        raise ValueError("no object found in the donor's box")
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def registered_guide(lr: np.ndarray, guide: np.ndarray, scale: int) -> np.ndarray:
    """The guide resampled onto the target's own geometry by the default preset's registration
    (unchanged when it finds less than its minimum shift): a mask from the thermal truth then
    cuts the RGB pixels of the same person."""
    from cmsr.config import CMSRConfig
    from cmsr.registration import register
    from cmsr.warp import AffineWarp, displacement_px

    settings = CMSRConfig.preset("best").registration
    lr_t = torch.from_numpy(lr / 255.0)
    g_t = torch.from_numpy(np.ascontiguousarray(guide / 255.0)).permute(2, 0, 1).float().contiguous()
    affine = register(g_t, lr_t.float(), torch.ones_like(lr_t, dtype=torch.bool), scale, settings)
    if affine is None:
        return guide
    h, w = guide.shape[:2]
    d = displacement_px(AffineWarp(affine), h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [ys + d[..., 0], xs + d[..., 1]]
    return np.stack([ndi.map_coordinates(guide[..., c], coords, order=1, mode="nearest") for c in range(3)], -1)


def cut(donor: Donor, data: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The donor's object: (rgb (h, w, 3) grey levels, mask (h, w) bool), cropped to its box."""
    lr, guide, gt = read_pair(data, donor.dataset, donor.scene)
    y0, y1, x0, x1 = donor.box
    if donor.kind == "person":
        rgb = registered_guide(lr, guide, scale)
        box = gt[y0:y1, x0:x1]
        # the background of each row: the box's outer columns (the person stands inside the box;
        # ground below and wall above differ, so one value for the whole box would not do)
        background = ndi.median_filter(np.median(np.concatenate([box[:, :3], box[:, -3:]], 1), 1), size=5)
        inside = np.abs(box - background[:, None]) > PERSON_CONTRAST
        inside = ndi.binary_closing(ndi.binary_opening(inside, iterations=1), iterations=2)
        mask = np.zeros(gt.shape, bool)
        mask[y0:y1, x0:x1] = inside
    else:
        rgb = guide
        unit = guide / 255.0
        if donor.kind == "poster":
            mask = (unit.max(-1) - unit.min(-1)) > POSTER_SATURATION
        else:
            mask = unit.mean(-1) < TREE_DARKNESS
        box = np.zeros_like(mask)
        box[y0:y1, x0:x1] = True
        mask = ndi.binary_closing(ndi.binary_opening(mask & box, iterations=1), iterations=3)
    mask = ndi.binary_fill_holes(_largest(mask))
    ys, xs = np.nonzero(mask)
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return rgb[sl].astype(np.float32), mask[sl]


def paste(guide: np.ndarray, rgb: np.ndarray, mask: np.ndarray, draw: Draw) -> tuple[np.ndarray, np.ndarray]:
    """``guide`` with the object resized to ``draw.height`` x the host's height, its foot at
    ``draw.foot_*``, edges as they are (a binary mask, no feathering); returns (guide, region)."""
    H, W = guide.shape[:2]
    oh = max(8, int(round(draw.height * H)))
    ow = max(4, int(round(oh * rgb.shape[1] / rgb.shape[0])))
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    obj = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)
    m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(oh, ow), mode="bilinear",
                      align_corners=False, antialias=True)[0, 0].numpy() >= 0.5
    y1 = min(H - BORDER, int(round(draw.foot_y * H)))
    x0 = int(round(draw.foot_x * W - ow / 2))
    x0 = min(max(BORDER, x0), W - BORDER - ow)
    y0 = max(BORDER, y1 - oh)
    m = m[oh - (y1 - y0):]
    obj = obj.numpy()[oh - (y1 - y0):]
    out = guide.copy()
    region = np.zeros((H, W), bool)
    region[y0:y1, x0:x0 + ow] = m
    window = out[y0:y1, x0:x0 + ow]
    window[m] = obj[m]
    return out, region


def describe(draw: Draw) -> str:
    d = DONORS[draw.donor]
    return f"{d.kind} {d.name} -> {draw.host_dataset.split('_')[0]} {draw.host_scene} (h {draw.height:.2f})"
