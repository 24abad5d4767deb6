"""The ``guide_weight`` band of a job (``JobConfig.write_guide_weight``) on the bundled real sample.

Proves: the band is band 2 of the COG, described ``guide_weight``, NaN where the output is, with
band 1 bit-identical to a run without it; it is 0 for back-projection and 1 for the (ungated)
guided filter; the report summarises it; the quick-look gains a fourth panel; tiles store it in
their checksummed result; a job written without the band and rerun with it recomputes every tile
(the option is part of the plan key) while a job without it keeps the key it always had.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

import pipelines
from pipelines import JobConfig, bicubic_tile_fn
from pipelines.job.outputs import guide_weight_descriptions
from pipelines.job.tile_store import TileRecomputed, check_tile

TILES = dict(tile_size=128, halo=8)


@pytest.fixture(scope="module")
def target_with_nodata(sample, tmp_path_factory) -> str:
    """The sample's 40 m NIR with a nodata corner, so the band's NaN can be checked against band 1's."""
    d = tmp_path_factory.mktemp("gw")
    with rasterio.open(sample["target"]) as ds:
        a = ds.read(1).astype(np.float32)
        prof = dict(ds.profile, dtype="float32", nodata=float("nan"))
        desc, unit = ds.descriptions[0], ds.units[0]
    a[:6, :9] = np.nan
    path = d / "nir_40m_nodata.tif"
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(a, 1)
        dst.set_band_description(1, desc or "nir")
        dst.set_band_unit(1, unit or "reflectance")
    return str(path)


def _bands(path: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_band_two_is_the_weight_band_one_unchanged(sample, target_with_nodata, tmp_path) -> None:
    rgb = str(sample["rgb"])
    plain = pipelines.superresolve(rgb, target_with_nodata, str(tmp_path / "bp.tif"), JobConfig(method="bp", **TILES))
    both = pipelines.superresolve(rgb, target_with_nodata, str(tmp_path / "bpw.tif"),
                                  JobConfig(method="bp", write_guide_weight=True, **TILES))
    with rasterio.open(plain.cog) as a, rasterio.open(both.cog) as b:
        assert a.count == 1 and b.count == 2
        assert b.descriptions == (a.descriptions[0], "guide_weight") and b.units[0] == a.units[0]
        assert b.nodatavals[0] != b.nodatavals[0] and b.nodatavals[1] != b.nodatavals[1]  # NaN for both
        assert b.tags()["CMSR_GUIDE_WEIGHT_BANDS"] == "2"
        out, weight = b.read(1), b.read(2)
        np.testing.assert_array_equal(out, a.read(1))  # bit-identical, NaN included
    assert np.isnan(out).any()
    np.testing.assert_array_equal(np.isnan(weight), np.isnan(out))
    assert np.all(weight[np.isfinite(weight)] == 0.0)  # back-projection never reads the guide
    rep = json.loads(Path(both.report).read_text())
    assert rep["guide_weight"] == [{"band": 2, "of": b.descriptions[0], "mean": 0.0, "share_above_half": 0.0}]
    assert json.loads(Path(plain.report).read_text())["guide_weight"] is None
    assert rep["totals"]["seam_ratio"] == json.loads(Path(plain.report).read_text())["totals"]["seam_ratio"]
    # the quick-look gains one panel of the same width (plus the 4 px gap)
    w3, h3 = Image.open(plain.quicklook).size
    w4, h4 = Image.open(both.quicklook).size
    assert h4 == h3 and w4 == w3 + (w3 - 2 * 4) // 3 + 4


def test_guided_filter_band_is_one_and_feather_stitched(sample, tmp_path) -> None:
    o = pipelines.superresolve(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "g.tif"),
                               JobConfig(method="guided", write_guide_weight=True, stitch="feather", **TILES))
    weight = _bands(o.cog)
    assert np.all(weight[1] == 1.0)
    rep = json.loads(Path(o.report).read_text())
    assert rep["guide_weight"][0]["mean"] == 1.0 and rep["guide_weight"][0]["share_above_half"] == 1.0


def test_resume_without_then_with_the_band_recomputes(sample, tmp_path) -> None:
    rgb, tgt, out = str(sample["rgb"]), str(sample["target"]), str(tmp_path / "r.tif")
    assert "write_guide_weight" not in JobConfig().result_fields()  # old jobs keep their key
    assert JobConfig(write_guide_weight=True).result_fields()["write_guide_weight"] is True
    first = pipelines.superresolve(rgb, tgt, out, JobConfig(method="bp", quicklook=False, **TILES))
    n = json.loads(Path(first.report).read_text())["totals"]["processed"]
    again = pipelines.superresolve(rgb, tgt, out, JobConfig(method="bp", quicklook=False, write_guide_weight=True,
                                                            **TILES))
    rep = json.loads(Path(again.report).read_text())
    assert rep["totals"]["processed"] == n and rep["totals"]["reused"] == 0
    with rasterio.open(again.cog) as ds:
        assert ds.count == 2
    third = pipelines.superresolve(rgb, tgt, out, JobConfig(method="bp", quicklook=False, write_guide_weight=True,
                                                            **TILES))
    assert json.loads(Path(third.report).read_text())["totals"]["reused"] == n


def test_tile_weight_plane_is_checksummed(sample, tmp_path) -> None:
    cfg = JobConfig(method="bp", quicklook=False, write_guide_weight=True, **TILES)
    job = pipelines.prepare(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "c.tif"), cfg)
    r = pipelines.run_tile(job.job_path, 0)
    arr = np.load(r.path)
    assert arr.shape[0] == 2 and np.all(arr[1][np.isfinite(arr[0])] == 0.0)
    arr[1, 5, 5] = 0.5  # only the weight plane changes
    np.save(r.path, arr)
    assert "checksum" in (check_tile(job, 0).problem or "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not pipelines.run_tile(job.job_path, 0).reused
    assert any(issubclass(w.category, TileRecomputed) for w in caught)


def test_custom_tile_function_must_give_the_weight(sample, tmp_path) -> None:
    cfg = JobConfig(quicklook=False, write_guide_weight=True, **TILES)
    job = pipelines.prepare(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "f.tif"), cfg)
    with pytest.raises(RuntimeError, match="no guide weight"):
        pipelines.run_tile(job.job_path, 0, tile_fn=bicubic_tile_fn)


def test_multi_band_weight_descriptions() -> None:
    assert guide_weight_descriptions(["nir"]) == ["guide_weight"]
    assert guide_weight_descriptions(["b10", "b11"]) == ["guide_weight:b10", "guide_weight:b11"]
