"""Failpoints: the spec grammar and holding on exactly the configured hit."""

from __future__ import annotations

import pytest

from srlm import failpoints


def test_parse_spec():
    points = failpoints.parse("worker.before_commit=pause(120)@2, other=pause(0.5)")
    assert (points["worker.before_commit"].seconds, points["worker.before_commit"].hit) == (120.0, 2)
    assert (points["other"].seconds, points["other"].hit) == (0.5, 1)
    assert failpoints.parse("") == {}


@pytest.mark.parametrize("spec", ["worker=crash", "worker=pause(x)", "=pause(1)", "worker=pause(1)@"])
def test_bad_spec_names_the_variable(spec):
    with pytest.raises(ValueError, match="SRLM_FAILPOINTS"):
        failpoints.parse(spec)


def test_holds_on_its_hit_only(monkeypatch, capsys):
    monkeypatch.setattr(failpoints, "_armed", failpoints.parse("here=pause(0)@2"))
    failpoints.failpoint("elsewhere")
    failpoints.failpoint("here")
    assert capsys.readouterr().err == ""
    failpoints.failpoint("here")
    assert capsys.readouterr().err == "failpoint here reached\n"
    failpoints.failpoint("here")
    assert capsys.readouterr().err == ""
    assert failpoints.armed("here") and not failpoints.armed("elsewhere")
