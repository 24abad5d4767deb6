"""Inputs for the fault benchmark (``benchmarks/faults.py``), built from the real data only.

Why these shapes: issue 11 was found with ODM-style exports, so the survey here is what ODM and
a thermal pipeline hand an operator: an 8-bit RGB orthophoto with an alpha band that is 0 outside
an irregular survey footprint, and a float32 thermal ortho in degC-like units with -9999 outside
it. Both come from the Sentinel-2 clip in ``shared/data/geo/sentinel2_10m`` (RGB at 10 m; the real
10 m NIR averaged 4 x 4 to 40 m and mapped linearly to 10..35 "degC"), so the pixels are real
texture and the 10 m NIR is a ground truth. Every other input is one change of that survey (a
border of zeros with no nodata tag, a truncated file, a rotated geotransform, GCPs, ...), as the
bad exports operators meet are. Each builder writes once into the folder and returns the path.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.warp import Resampling, reproject

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CMSR_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
GEO = SHARED / "geo"
S2 = GEO / "sentinel2_10m"
ULB = SHARED / "pairs" / "ulb17vt_thermal_x4"
NODATA = -9999.0
LR_FACTOR = 4  # 10 m RGB, 40 m thermal


def read(path: str | Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def write(path: Path, data: np.ndarray, profile: dict, **changes) -> str:
    """``data`` (bands, h, w) as a GeoTIFF: ``profile`` with the array's shape/dtype and ``changes``."""
    prof = dict(profile, count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=str(data.dtype))
    prof.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning for the GCP file
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
    return str(path)


def footprint(h: int, w: int) -> np.ndarray:
    """An irregular survey footprint (True inside) off the raster's edges, as an orthomosaic's:
    a tilted ellipse over about 60% of the raster."""
    rows, cols = np.mgrid[0:h, 0:w]
    y, x = (rows + 0.5 - h / 2) / (h * 0.46), (cols + 0.5 - w / 2) / (w * 0.47)
    return (x * 0.9 + y * 0.3) ** 2 + (y * 0.95 - x * 0.2) ** 2 < 1.0


def to_celsius(nir: np.ndarray) -> np.ndarray:
    """The real NIR's DN mapped linearly to a thermal-like 10..35 degC (fixed constants, so the
    40 m target and the 10 m truth share one mapping)."""
    return (10.0 + 25.0 * (nir.astype(np.float64) - 1157.0) / (2244.0 - 1157.0)).astype(np.float32)


@dataclass(frozen=True)
class Survey:
    """The base survey and its truth (arrays kept for the checks)."""

    rgb: str  # RGBA uint8, alpha 0 outside the footprint
    thermal: str  # float32 degC, -9999 outside, 40 m, same CRS
    truth_c: np.ndarray  # (H, W) the real 10 m NIR in the same degC
    inside_hr: np.ndarray  # (H, W) footprint on the RGB grid
    inside_lr: np.ndarray  # (h, w) footprint on the 40 m grid
    thermal_c: np.ndarray  # (h, w) the 40 m target, NaN outside


class FaultInputs:
    """Builds (once) every input file of the benchmark under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        rgb16, self.rgb_profile = read(S2 / "rgb.tif")
        nir, self.nir_profile = read(S2 / "nir.tif")
        h, w = nir.shape[1] // LR_FACTOR, nir.shape[2] // LR_FACTOR
        self.inside_lr = footprint(h, w)
        self.inside_hr = np.repeat(np.repeat(self.inside_lr, LR_FACTOR, 0), LR_FACTOR, 1)
        self.rgb8 = np.clip((rgb16.astype(np.float64) - 900.0) / (1900.0 - 900.0) * 255.0, 0, 255).astype(np.uint8)
        self.truth_c = to_celsius(nir[0])
        lr = self.truth_c.astype(np.float64).reshape(h, LR_FACTOR, w, LR_FACTOR).mean(axis=(1, 3))
        self.lr_c = np.where(self.inside_lr, lr, np.nan).astype(np.float32)
        self.lr_transform = self.nir_profile["transform"] @ Affine.scale(LR_FACTOR)

    def path(self, name: str) -> Path:
        return self.folder / name

    def _once(self, name: str, build) -> str:
        p = self.path(name)
        if not p.exists():
            build(p)
        return str(p)

    def _thermal(self, p: Path, values: np.ndarray, transform: Affine | None = None, **changes) -> str:
        data = np.where(np.isfinite(values), values, NODATA).astype(np.float32)[None]
        prof = dict(self.nir_profile, transform=transform or self.lr_transform, nodata=NODATA, tiled=True,
                    blockxsize=16, blockysize=16, compress="deflate", predictor=3)
        return write(p, data, prof, **changes)

    # ------------------------------------------------------------------ the base survey

    def survey(self) -> Survey:
        return Survey(rgb=self.rgb(), thermal=self.thermal(), truth_c=self.truth_c, inside_hr=self.inside_hr,
                      inside_lr=self.inside_lr, thermal_c=self.lr_c)

    def rgb(self) -> str:
        """ODM's orthophoto: RGBA uint8, alpha 0 outside the footprint (and black there)."""
        def build(p: Path) -> None:
            alpha = np.where(self.inside_hr, 255, 0).astype(np.uint8)[None]
            rgba = np.concatenate([np.where(self.inside_hr, self.rgb8, 0).astype(np.uint8), alpha])
            write(p, rgba, self.rgb_profile, photometric="RGB", ALPHA="YES", nodata=None, blockxsize=64,
                  blockysize=64)
        return self._once("odm_orthophoto.tif", build)

    def thermal(self) -> str:
        """The thermal ortho: float32 degC, -9999 outside the footprint, 40 m, the RGB's CRS."""
        return self._once("thermal.tif", lambda p: self._thermal(p, self.lr_c))

    def thermal_other_flight(self) -> str:
        """Another job's target for the same output: in another CRS (UTM 20S) and 5 degC warmer."""
        def build(p: Path) -> None:
            src = np.where(np.isfinite(self.lr_c), self.lr_c + 5.0, NODATA).astype(np.float32)
            # 40 m pixels in EPSG:32720 covering the same ground (the clip is near 69 W, zone 19's edge)
            from rasterio.warp import calculate_default_transform

            t, w, h = calculate_default_transform(self.nir_profile["crs"], "EPSG:32720", src.shape[1], src.shape[0],
                                                  *rasterio.transform.array_bounds(src.shape[0], src.shape[1],
                                                                                   self.lr_transform), resolution=40)
            dst = np.full((h, w), NODATA, np.float32)
            reproject(src, dst, src_transform=self.lr_transform, src_crs=self.nir_profile["crs"], dst_transform=t,
                      dst_crs="EPSG:32720", resampling=Resampling.bilinear, src_nodata=NODATA, dst_nodata=NODATA)
            self._thermal(p, np.where(dst == NODATA, np.nan, dst), transform=t, crs="EPSG:32720")
        return self._once("thermal_flight2_utm20s.tif", build)

    # ------------------------------------------------------------------ nodata and validity

    def thermal_zero_border(self) -> str:
        """The thermal export whose outside is 0 with no nodata tag (item 3)."""
        return self._once("thermal_zero_border.tif", lambda p: self._thermal(
            p, np.where(self.inside_lr, self.lr_c, 0.0), nodata=None))

    def thermal_one_pixel(self) -> str:
        """One valid pixel in the whole target (item 4)."""
        def build(p: Path) -> None:
            one = np.full_like(self.lr_c, np.nan)
            one[25, 37] = self.lr_c[25, 37]
            self._thermal(p, one)
        return self._once("thermal_one_pixel.tif", build)

    def thermal_all_nodata(self) -> str:
        """Every pixel -9999 (items 7 and issue 3's list)."""
        return self._once("thermal_all_nodata.tif", lambda p: self._thermal(p, np.full_like(self.lr_c, np.nan)))

    def rgb_transparent(self) -> str:
        """An RGBA whose alpha is 0 everywhere (an empty export, item 7)."""
        def build(p: Path) -> None:
            rgba = np.concatenate([self.rgb8, np.zeros((1,) + self.rgb8.shape[1:], np.uint8)])
            write(p, rgba, self.rgb_profile, photometric="RGB", ALPHA="YES", nodata=None)
        return self._once("rgb_transparent.tif", build)

    def truncated(self, which: str) -> str:
        """The first 60% of the RGB's or the thermal's bytes (a copy cut short, item 8)."""
        src = self.rgb() if which == "rgb" else self.thermal()
        def build(p: Path) -> None:
            data = Path(src).read_bytes()
            p.write_bytes(data[: int(len(data) * 0.6)])
        return self._once(f"{which}_truncated.tif", build)

    # ------------------------------------------------------------------ geometry

    def rgb_rotated(self) -> str:
        """The RGBA with its geotransform rotated 30 degrees about the clip's centre (item 10)."""
        t0 = self.rgb_profile["transform"]
        cx, cy = t0 * (150, 100)
        t = Affine.translation(cx, cy) @ Affine.rotation(30) @ Affine.translation(-cx, -cy) @ t0
        return self._once("odm_orthophoto_rotated.tif",
                          lambda p: write(p, np.concatenate([self.rgb8, np.full((1, 200, 300), 255, np.uint8)]),
                                          self.rgb_profile, transform=t, photometric="RGB", ALPHA="YES",
                                          nodata=None))

    def thermal_at(self, res_x: float, res_y: float) -> str:
        """The real 10 m truth averaged onto a north-up res_x x res_y m grid (items 11, 12)."""
        def build(p: Path) -> None:
            t0 = self.nir_profile["transform"]
            w, h = int(3000 // res_x), int(2000 // res_y)
            t = Affine(res_x, 0, t0.c, 0, -res_y, t0.f)
            dst = np.full((h, w), np.nan, np.float32)
            reproject(self.truth_c, dst, src_transform=t0, src_crs=self.nir_profile["crs"], dst_transform=t,
                      dst_crs=self.nir_profile["crs"], resampling=Resampling.average)
            self._thermal(p, dst, transform=t, tiled=False, blockxsize=None, blockysize=None)
        return self._once(f"thermal_{res_x:g}x{res_y:g}m.tif", build)

    def thermal_gcps(self) -> str:
        """The thermal georeferenced by 9 GCPs instead of a geotransform (item 13)."""
        def build(p: Path) -> None:
            t = self.lr_transform
            h, w = self.lr_c.shape
            gcps = [GroundControlPoint(row=r, col=c, x=(t * (c, r))[0], y=(t * (c, r))[1])
                    for r in (0, h // 2, h) for c in (0, w // 2, w)]
            prof = {k: v for k, v in self.nir_profile.items() if k not in ("transform", "crs")}
            data = np.where(np.isfinite(self.lr_c), self.lr_c, NODATA).astype(np.float32)[None]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(p, "w", **dict(prof, dtype="float32", nodata=NODATA, width=w, height=h,
                                                  blockxsize=16, blockysize=16)) as dst:
                    dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(32719))
                    dst.write(data)
        return self._once("thermal_gcps.tif", build)

    def thermal_clip(self) -> str:
        """A 6 x 6 LR-pixel clip of the thermal: ~1% of the RGB (issue 3: overlap below 10%)."""
        def build(p: Path) -> None:
            win = ((22, 28), (34, 40))
            self._thermal(p, self.lr_c[22:28, 34:40], transform=rasterio.windows.transform(win, self.lr_transform),
                          tiled=False, blockxsize=None, blockysize=None)
        return self._once("thermal_clip.tif", build)

    # ------------------------------------------------------------------ plain images for `cmsr sr`

    def sr_pair(self) -> tuple[str, str]:
        """A real ULB17-VT thermal LR (80 x 60) and its RGB guide (320 x 240), as shipped."""
        return str(ULB / "006_lr.png"), str(ULB / "006_guide.png")

    def sr_target_1x1(self) -> str:
        from PIL import Image

        def build(p: Path) -> None:
            Image.fromarray(np.asarray(Image.open(ULB / "006_lr.png"))[:1, :1]).save(p)
        return self._once("thermal_1x1.png", build)

    def sr_guide_8x_small(self) -> str:
        """The guide shrunk 8x per side (40 x 30 for an 80 x 60 target at --scale 4)."""
        from PIL import Image

        def build(p: Path) -> None:
            Image.open(ULB / "006_guide.png").convert("RGB").resize((40, 30), Image.BILINEAR).save(p)
        return self._once("guide_8x_small.png", build)

    # ------------------------------------------------------------------ issue 3's real odd files

    @staticmethod
    def no_crs_rgb() -> str:
        return str(S2 / "red_band.nc")  # the CRS only as a netCDF attribute: GDAL sees none

    @staticmethod
    def far_away_target() -> str:
        return str(GEO / "landsat_marburg_30m" / "LC08_L1TP_195025_20130707_20170503_01_T1_B10.TIF")

    @staticmethod
    def six_band_rgb_and_dem() -> tuple[str, str]:
        d = GEO / "landsat7_olinda"
        return str(d / "L7_ETMs.tif"), str(d / "olinda_dem_utm25s.tif")

    def junk(self) -> str:
        return self._once("junk.tif", lambda p: p.write_text("not a raster\n"))
