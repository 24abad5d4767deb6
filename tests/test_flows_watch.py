"""Survey folder discovery for ``cmsr serve`` (naming rule, survey.toml, up-to-date rule)."""

from __future__ import annotations

import os
import shutil
import time

from flows.watch import discover, up_to_date


def _touch(p, t=None):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    if t is not None:
        os.utime(p, (t, t))


def test_naming_rule_and_survey_toml(tmp_path):
    _touch(tmp_path / "a" / "odm_orthophoto.tif")
    _touch(tmp_path / "a" / "thermal_ortho.tif")  # both words: the target
    _touch(tmp_path / "b" / "RGB.tiff")
    _touch(tmp_path / "b" / "flight2_LWIR.tif")
    _touch(tmp_path / "c" / "rgb.tif")  # no target
    _touch(tmp_path / "d" / "notes.txt")  # no GeoTIFF: not a survey
    _touch(tmp_path / "e" / "x.tif")
    _touch(tmp_path / "e" / "y.tif")
    (tmp_path / "e" / "survey.toml").write_text('rgb = "x.tif"\ntarget = "y.tif"\nout = "o/sr.tif"\n[config]\nmethod = "bp"\n')
    found = {os.path.basename(s.folder): s for s in discover(str(tmp_path))}
    assert set(found) == {"a", "b", "c", "e"}
    assert found["a"].rgb.endswith("odm_orthophoto.tif") and found["a"].target.endswith("thermal_ortho.tif")
    assert found["a"].out == str(tmp_path / "a" / "cmsr" / "thermal_ortho_sr.tif")
    assert found["b"].target.endswith("flight2_LWIR.tif") and found["b"].problem is None
    assert found["c"].problem and "found 1 RGB and 0 target" in found["c"].problem
    assert found["e"].out == str(tmp_path / "e" / "o" / "sr.tif") and found["e"].config == {"method": "bp"}


def test_up_to_date_needs_newer_output_and_report(tmp_path):
    now = time.time()
    _touch(tmp_path / "s" / "rgb.tif", now - 100)
    _touch(tmp_path / "s" / "thermal.tif", now - 100)
    (s,) = discover(str(tmp_path))
    assert not up_to_date(s)
    _touch(tmp_path / "s" / "cmsr" / "thermal_sr.tif", now - 50)
    assert not up_to_date(s)  # no report yet
    _touch(tmp_path / "s" / "cmsr" / "thermal_sr.report.json", now - 50)
    assert up_to_date(s)
    _touch(tmp_path / "s" / "thermal.tif", now)  # a new thermal mosaic
    assert not up_to_date(s)
    shutil.rmtree(tmp_path / "s" / "cmsr")
