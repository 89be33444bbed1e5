"""deepkern study NAME --quick: every study runs end to end in seconds, prints its table and
writes its PNG; the ensemble study's bookkeeping."""

import numpy as np
import pytest

from deepkern import cli, studies
from deepkern.studies import common


@pytest.mark.parametrize("name", list(studies.STUDIES))
def test_study_quick_smoke(name, tmp_path, capsys):
    png = tmp_path / f"{name}.png"
    assert cli.main(["study", name, "--quick", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "|---" in out and "plot written" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_ensemble_study_result_shape():
    r = studies.run("ensemble", quick=True)
    assert [row[0] for row in r.rows] == list(studies.ensemble.METHODS)
    for m in studies.ensemble.METHODS:
        assert len(r.data["acc"][m]) == 1 and 0.0 <= r.data["acc"][m][0] <= 1.0
    # the independent ensemble spends M times the single model's epochs (2 members in quick mode)
    assert r.data["cost"]["independent"][0] == pytest.approx(2 * r.data["cost"]["single"][0])
    assert r.data["cost"]["single, Mx epochs"][0] == r.data["cost"]["independent"][0]


def test_unknown_study_and_table_format():
    with pytest.raises(ValueError, match="unknown study"):
        studies.run("nope")
    with pytest.raises(SystemExit):
        cli.main(["study", "nope"])
    t = common.format_table(["a", "bb"], [[1, "xyz"], [22, "q"]])
    assert t.splitlines() == ["| a  | bb  |", "|----|-----|", "| 1  | xyz |", "| 22 | q   |"]


def test_mlp_init_and_layer_stats():
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = np.arange(64) % 10
    zeros = common.mlp(3, init="zeros")
    acts, grads = common.layer_stats(zeros, x, y)
    assert acts == [0.0, 0.0, 0.0] and grads[:3] == [0.0, 0.0, 0.0] and grads[3] == 0.0
    he = common.mlp(3, init="he")
    acts, grads = common.layer_stats(he, x, y)
    assert all(0.3 < a < 3 for a in acts) and all(g > 0 for g in grads)
    with pytest.raises(ValueError, match="unknown init"):
        common.mlp(2, init="bogus")
