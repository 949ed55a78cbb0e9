"""Lesson 00's exercise checkers, setup report and arrow panel."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.lab.environment import describe_environment
from clipping_lib.lab.exercises.lesson00 import LARGEST_TURN_DEGREES, ex1, ex2
from clipping_lib.lab.panels.geometry import angle_degrees
from clipping_lib.lab.panels.start import arrow_figure
from clipping_lib.lab.plots import figure_to_png


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [(5, "norm of (3, 4)"), (8.0, "largest coordinate"), (14, "1-norm"), (12, "not it"),
     ("10", "one number")],
)  # fmt: skip
def test_ex1_diagnoses(answer, diagnosis, capsys):
    assert not ex1.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex1_accepts_ten():
    assert ex1.check(10) and ex1.check(10.0)


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [(math.radians(LARGEST_TURN_DEGREES), "radians"), (45.0, "diagonal"),
     (53.13, "x-axis"), (3.73, "not the largest"), (True, "one number")],
)  # fmt: skip
def test_ex2_diagnoses(answer, diagnosis, capsys):
    assert not ex2.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex2_reference_is_the_angle_to_the_diagonal():
    g = torch.tensor([3.0, 4.0])
    assert math.isclose(angle_degrees(torch.ones(2), g), LARGEST_TURN_DEGREES, rel_tol=1e-9)
    assert ex2.check(round(LARGEST_TURN_DEGREES, 2))


def test_arrow_figure_reaches_past_the_vector_and_moves_one_arrow():
    figure, arrow = arrow_figure(torch.tensor([6.0, 8.0]), "g = (6, 8)")
    ax = figure.axes[0]
    assert ax.get_xlim()[1] > 8 and ax.get_ylim()[1] > 8
    before = figure_to_png(figure)
    arrow.set_data(dx=3.0, dy=4.0)
    assert figure_to_png(figure) != before


def test_describe_environment_reports_the_versions(capsys):
    report = describe_environment()
    assert report["torch"] == torch.__version__
    assert {"python", "matplotlib", "ipywidgets", "device", "library"} <= report.keys()
    assert "torch" in capsys.readouterr().out
