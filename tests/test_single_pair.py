"""The body of ``cmsr sr``: file errors name the file, outputs keep units, FLIR reading."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmsr import InvalidInput, image_io
from cmsr.errors import InputWarning
from cmsr.single_pair import run_single_pair


@pytest.fixture(scope="module")
def lr(shared_data: Path) -> Path:
    return shared_data / "pairs" / "ulb17vt_thermal_x4" / "064_lr.png"


@pytest.fixture(scope="module")
def guide(shared_data: Path) -> Path:
    return shared_data / "pairs" / "ulb17vt_thermal_x4" / "064_guide.png"


@pytest.fixture(scope="module")
def flir(shared_data: Path) -> Path:
    return shared_data / "flir" / "FLIR.jpg"


def test_missing_file_is_named(lr: Path, guide: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing_here.png"
    with pytest.raises(InvalidInput, match="nothing_here.png: file not found"):
        run_single_pair(missing, guide, tmp_path / "o.png", 4, "bicubic")
    with pytest.raises(InvalidInput, match="nothing_here.png: file not found"):
        run_single_pair(lr, missing, tmp_path / "o.png", 4, "bicubic")


def test_unreadable_image_is_named(lr: Path, guide: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png at all")
    with pytest.raises(InvalidInput, match="junk.png: cannot read image"):
        run_single_pair(junk, guide, tmp_path / "o.png", 4, "bicubic")
    bad_tif = tmp_path / "junk.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(InvalidInput, match="junk.tif: cannot read image"):
        run_single_pair(lr, bad_tif, tmp_path / "o.png", 4, "guided")


@pytest.mark.parametrize("scale", [1, 9])
def test_scale_out_of_range_names_the_target(lr: Path, guide: Path, tmp_path: Path, scale: int) -> None:
    with pytest.raises(InvalidInput, match=rf"064_lr.png: scale must be an integer in 2..8, got {scale}"):
        run_single_pair(lr, guide, tmp_path / "o.png", scale, "bicubic")
    assert not (tmp_path / "o.png").exists()


def test_aspect_mismatch_names_the_guide_and_inputs_are_never_overwritten(
    lr: Path, guide: Path, flir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match=r"FLIR.jpg: guide size 640x480 and target size 60x80"):
        run_single_pair(lr, flir, tmp_path / "o.png", 4, "guided")
    with pytest.raises(InvalidInput, match="refusing to overwrite"):
        run_single_pair(lr, guide, lr, 4, "bicubic")
    with pytest.raises(InvalidInput, match="unsupported output format"):
        run_single_pair(lr, guide, tmp_path / "o.bmp", 4, "bicubic")


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_outputs_get_a_plain_files_mode(lr: Path, guide: Path, tmp_path: Path, umask: int) -> None:
    """Written through a temp file, yet readable as the user's umask says (not mkstemp's 0600)."""
    old = os.umask(umask)
    try:
        for name in ("o.png", "o.tif"):
            run_single_pair(lr, guide, tmp_path / name, 4, "bicubic")
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    finally:
        os.umask(old)


def test_a_target_too_small_names_the_file(guide: Path, tmp_path: Path) -> None:
    one = tmp_path / "one_pixel.png"
    image_io.write_image(one, np.full((1, 1), 7, np.uint8), np.uint8)
    with pytest.raises(InvalidInput, match=r"one_pixel.png: target is too small: 1x1"):
        run_single_pair(one, guide, tmp_path / "o.png", 4, "bp")
    assert not (tmp_path / "o.png").exists()


def test_a_guide_the_method_ignores_is_said(lr: Path, guide: Path, tmp_path: Path) -> None:
    """A guide 8x too small with a method that never reads it: said before the run, not silently
    dropped (the user may have given the wrong file)."""
    small = tmp_path / "small_guide.png"
    rgb = image_io.read_guide(guide)
    Image.fromarray(np.ascontiguousarray(rgb[::8, ::8])).save(small)
    with pytest.warns(InputWarning, match=r"does not use a guide; .*small_guide.png is ignored"):
        run_single_pair(lr, small, tmp_path / "o.png", 4, "bp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        run_single_pair(lr, guide, tmp_path / "o2.png", 4, "guided")


def test_png_keeps_the_target_dtype_and_tiff_is_float32(lr: Path, guide: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = run_single_pair(lr, guide, tmp_path / "o.png", 4, "bp", echo=lines.append)
    png = image_io.read_image(out.out_path)
    assert png.dtype == np.uint8 and png.shape == (240, 320)
    np.testing.assert_array_equal(png, np.clip(np.round(out.result.image), 0, 255).astype(np.uint8))
    tif = image_io.read_image(run_single_pair(lr, guide, tmp_path / "o.tif", 4, "bp").out_path)
    assert tif.dtype == np.float32
    np.testing.assert_array_equal(tif, out.result.image)
    assert any("wrote" in line for line in lines)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_flir_gives_thermal_celsius_and_rgb(flir: Path, tmp_path: Path) -> None:
    thermal = image_io.read_target(flir)
    photo = image_io.read_guide(flir)
    assert thermal.dtype == np.float32 and thermal.shape == (320, 240)
    assert 0.0 < float(thermal.min()) < float(thermal.max()) < 100.0  # degrees C, a real scene
    assert photo.dtype == np.uint8 and photo.shape == (640, 480, 3)
    with pytest.raises(InvalidInput, match="PNG cannot hold"):
        run_single_pair(flir, flir, tmp_path / "o.png", 2, "bicubic")
    out = run_single_pair(flir, flir, tmp_path / "o.tif", 2, "bicubic")
    assert abs(float(np.mean(image_io.read_image(out.out_path))) - float(thermal.mean())) < 0.1


def test_warp_drawing_is_an_image_of_the_field(tmp_path: Path) -> None:
    disp = np.zeros((60, 80, 2))
    disp[..., 1] = 2.0  # 2 px to the right everywhere
    path = image_io.write_displacement(tmp_path / "warp.png", disp, np.zeros((60, 80, 3), np.uint8))
    img = image_io.read_image(path)
    assert img.shape == (60, 164, 3)
    left = img[:, :80].astype(int)
    assert left[..., 0].mean() > 200 and left[..., 1].mean() < 10  # hue 0 (red) = pointing right


@pytest.mark.slow
def test_cmsr_with_save_warp_draws_the_learned_field(
    lr: Path, guide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmsr.config import CMSRConfig

    from cmsr.config import LearnedWarp

    tiny = CMSRConfig.fast().replace(max_iters=8, min_iters=4, self_ensemble=False, gradual=False, warp=LearnedWarp())
    monkeypatch.setattr(CMSRConfig, "preset", classmethod(lambda cls, name: tiny))
    lines: list[str] = []
    out = run_single_pair(lr, guide, tmp_path / "sr.png", 4, "cmsr", preset="fast",
                          save_warp=tmp_path / "warp.png", echo=lines.append)
    assert image_io.read_image(out.out_path).shape == (240, 320)
    assert out.warp_path is not None and image_io.read_image(out.warp_path).shape == (240, 644, 3)
    assert any("mean displacement" in line for line in lines)
    nowarp = run_single_pair(lr, guide, tmp_path / "sr2.png", 4, "cmsr", preset="fast", no_warp=True,
                             save_warp=tmp_path / "warp2.png", echo=lines.append)
    assert nowarp.warp_path is None and not (tmp_path / "warp2.png").exists()


@pytest.mark.parametrize("method, value", [("bp", 0.0), ("guided", 1.0)])
def test_write_guide_weight_writes_a_float32_map_beside_the_output(
    lr: Path, guide: Path, tmp_path: Path, method: str, value: float
) -> None:
    """``cmsr sr --write-guide-weight``: ``<out stem>.guide_weight.tif``, float32, the output's size,
    0 where only the target counts (bp), 1 where the ungated guided filter used the guide."""
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "sr.png"
    r = CliRunner().invoke(app, ["sr", "--target", str(lr), "--guide", str(guide), "--scale", "4", "--out", str(out),
                                 "--method", method, "--write-guide-weight", "--quiet"])
    assert r.exit_code == 0, r.output
    weight = image_io.read_target(tmp_path / "sr.guide_weight.tif")
    assert weight.dtype == np.float32 and weight.shape == np.asarray(Image.open(out)).shape
    assert np.all(weight == value)


def test_guide_weight_is_not_written_unless_asked_and_never_over_an_input(lr: Path, guide: Path, tmp_path: Path) -> None:
    res = run_single_pair(lr, guide, tmp_path / "o.png", 4, "bp")
    assert res.guide_weight_path is None and not (tmp_path / "o.guide_weight.tif").exists()
    victim = tmp_path / "in.guide_weight.tif"
    image_io.write_image(victim, np.zeros((8, 8), np.float32))
    before = victim.read_bytes()
    with pytest.raises(InvalidInput, match="output path is an input file"):
        run_single_pair(victim, guide, tmp_path / "in.png", 4, "bp", write_guide_weight=True)
    assert victim.read_bytes() == before
