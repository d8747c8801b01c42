"""Replicates are replicates and verdicts cannot mix settings (issue 19, cases 4-6 and the
report's part of case 10): copied folders, repeated seeds and runs stopped early are set
apart; verdicts do not depend on the order of the runs; every seed-level interval uses t with
k - 1 degrees of freedom (scipy as the reference) and bounded numbers stay in range; hostile
YAML and labels cannot hurt the report."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from lightning_saliency.generalization import CSV_FIELDS, CSV_NAME, Estimate, MetricKey, csv_row
from lightning_saliency.report import load_runs, main
from lightning_saliency.report.intervals import t_interval, welch_difference
from lightning_saliency.report.replicates import select_replicates
from lightning_saliency.report.table import difference

pytestmark = pytest.mark.filterwarnings("ignore:report. run .* is set apart")


def _run(folder: Path, sf: int, seed: int, above: float, epochs: int = 1,
         shortcut: bool = False) -> Path:  # fmt: skip
    """A run folder (config.yaml and CSV) with the numbers verdict (a) reads."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"split_factor": sf, "num_models": 2, **({"shortcut": {"split": 0}} if shortcut else {})}
    config = {"seed_everything": seed, "model": {"backbone": "small_cnn"},
              "data": {"class_path": "lightning_saliency.data.DigitsDataModule", "init_args": data},
              "trainer": {"callbacks": [{"class_path": "lightning_saliency.callbacks."
                                         "InterpretationGeneralization",
                                         "init_args": {"methods": ["simple_grad"]}}]}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with (folder / CSV_NAME).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for epoch in range(epochs):
            for metric, value in (("spearman_above_chance", above), ("spearman", above + 0.2)):
                key = MetricKey("simple_grad", "pairs", "test", metric, "fit")
                est = Estimate(value, 0.01, value - 0.0196, value + 0.0196, 32)
                writer.writerow(csv_row(key, est, epoch, 10 * (epoch + 1)))
    return folder


def _studies(root: Path) -> dict[str, Path]:
    """sf 2 and sf 16, three seeds each, and a planted-shortcut control at sf 2."""
    out = {}
    for seed, noise in enumerate((0.0, 0.02, -0.03)):
        _run(root / "sf2" / f"s{seed}", 2, seed, 0.30 + noise)
        _run(root / "sf16" / f"s{seed}", 16, seed, 0.10 - noise)
        _run(root / "ctrl" / f"s{seed}", 2, seed, 0.05 + 2 * noise, shortcut=True)
    for name in ("sf2", "sf16", "ctrl"):
        out[name] = root / name
    return out


def _verdicts(md: str) -> str:
    return md[md.index("## Verdicts"):md.index("## (a)")]


def test_the_verdict_does_not_depend_on_the_order_of_the_runs(tmp_path: Path) -> None:
    """Case 5: ``report sf2 sf16 ctrl`` and ``report ctrl sf2 sf16`` used to give different
    verdicts (runs keyed by seed only replaced each other); now they are equal, and a finding
    that two settings would feed says so instead of mixing them."""
    d = _studies(tmp_path / "runs")
    texts = []
    for i, order in enumerate((["sf2", "sf16", "ctrl"], ["ctrl", "sf2", "sf16"])):
        main([*(str(d[n]) for n in order), "--out", str(tmp_path / f"out{i}")])
        texts.append(_verdicts((tmp_path / f"out{i}" / "report.md").read_text()))
    assert texts[0] == texts[1]
    line = next(ln for ln in texts[0].splitlines() if ln.startswith("| a |"))
    assert "cannot tell: runs of several settings give one side" in line
    main([str(d["sf16"]), str(d["sf2"]), "--out", str(tmp_path / "clean")])
    line = next(ln for ln in _verdicts((tmp_path / "clean" / "report.md").read_text())
                .splitlines() if ln.startswith("| a |"))  # fmt: skip
    # the runs used are named; sf16 - sf2 per seed: -0.2, -0.24, -0.14 -> paired t, 2 df
    assert "sf16/s0, sf16/s1, sf16/s2, sf2/s0, sf2/s1, sf2/s2 | 0, 1, 2 | **reproduces** |" in line
    diffs = np.array([-0.2, -0.24, -0.14])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert f"{diffs.mean():.4f} [{diffs.mean() - half:.4f}, {diffs.mean() + half:.4f}]" in line


def test_copies_repeated_seeds_and_early_stops_are_set_apart(tmp_path: Path) -> None:
    """Case 4: a copied folder counted as a fourth seed, two runs whose seeds did not reach
    the numbers counted as two, a run stopped at epoch 0 was averaged with epoch-1 runs."""
    root = tmp_path / "runs"
    for seed in range(3):
        _run(root / f"s{seed}", 2, seed, 0.3 + 0.01 * seed, epochs=2)
    shutil.copytree(root / "s0", root / "s0_copy")
    _run(root / "s1_again", 2, 1, 0.25, epochs=2)  # same setting, same effective seeds
    _run(root / "s5_short", 2, 5, 0.2, epochs=1)  # stopped after epoch 0
    runs = load_runs(root)
    kept, apart = select_replicates(list(reversed(runs)))
    assert sorted(r.name for r in kept) == ["s0", "s1", "s2"]
    why = {r.name: reason for r, reason in apart}
    assert "byte-identical to s0's" in why["s0_copy"]
    assert "repeats the effective seeds of s1" in why["s1_again"]
    assert "read at epoch 0, its setting's other runs at epoch 1" in why["s5_short"]
    with pytest.warns(UserWarning, match="s0_copy is set apart"):
        main([str(root), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Set apart" in md and "3 seeds: s0, s1, s2" in md and "s0_copy" not in md.split(
        "## Runs")[1]


def test_seed_level_intervals_use_t_with_k_minus_1_df_and_stay_in_range() -> None:
    """Case 6: the 'independent runs' interval used 1.96 x seed-level errors; a Spearman
    interval over 2 seeds was [-0.19, 1.24]."""
    x = np.array([0.1, 0.25, 0.3])
    e = t_interval(x.tolist())
    assert e is not None
    lo, hi = stats.t.interval(0.95, 2, loc=x.mean(), scale=stats.sem(x))
    assert math.isclose(e.lo, lo, rel_tol=1e-9) and math.isclose(e.hi, hi, rel_tol=1e-9)
    for values in ([0.95, 0.999], [0.2, 0.99], [-0.99, 0.9], [1.0, 1.0]):
        r = t_interval(values, bounds=(-1.0, 1.0))
        assert r is not None and -1.0 <= r.lo <= r.value <= r.hi <= 1.0, (values, r)
    p = t_interval([0.01, 0.3], bounds=(0.0, 1.0))
    assert p is not None and 0.0 <= p.lo <= p.hi <= 1.0
    # two settings' seed-level means of independent runs: Welch, as scipy computes it
    a, b = np.array([0.5, 0.55, 0.45]), np.array([0.3, 0.2, 0.32, 0.28])
    ea, eb = t_interval(a.tolist()), t_interval(b.tolist())
    assert ea is not None and eb is not None
    d = difference(ea, eb)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d is not None and d.method == "welch"
    assert math.isclose(d.lo, ref.low, rel_tol=1e-9) and math.isclose(d.hi, ref.high, rel_tol=1e-9)
    assert welch_difference(ea, eb).lo == d.lo


def test_a_yaml_alias_bomb_in_a_config_is_refused_quickly(tmp_path: Path) -> None:
    """Case 10: a 1 KB alias bomb in a run's config.yaml exhausted memory in the report."""
    folder = _run(tmp_path / "bomb", 2, 0, 0.3)
    levels = "abcdefghijklmnopqrstuvwxyz"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in itertools.pairwise(levels)
    )
    assert len(bomb) < 2000
    (folder / "config.yaml").write_text(bomb)
    with pytest.raises(ValueError, match="expands to more than"):
        load_runs(folder)


def test_labels_and_names_are_escaped_in_markdown(tmp_path: Path) -> None:
    """Case 10: a label with ``|`` or HTML was written into report.md raw."""
    from lightning_saliency.report.markdown import cell_text

    assert cell_text("a|b<img src=x onerror=alert(1)>") == "a\\|b&lt;img src=x onerror=alert(1)&gt;"
    _run(tmp_path / "runs" / "x|<b>y", 2, 0, 0.3)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<b>" not in md and "x\\|&lt;b&gt;y" in md


@pytest.mark.parametrize("k", [3, 5])
def test_the_detectable_effect_is_detected_80_percent_of_the_time(k: int) -> None:
    """Simulated designs (scipy's one-sample t test, an independent reference): k seeds with
    sd 1 and a true effect equal to ``detectable_effect`` reject 0 in 80% of 40,000 draws;
    an effect equal to the half-width, in a little over half (61% at 3 seeds, 55% at 5)."""
    from lightning_saliency.report.intervals import detectable_effect

    se = 1.0 / math.sqrt(k)
    effect = detectable_effect(Estimate(0.0, se, -1.0, 1.0, k, method="seeds"))
    rng = np.random.default_rng(0)
    draws = rng.normal(effect, 1.0, size=(40_000, k))
    rejected = stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    half = stats.t.ppf(0.975, k - 1) * se
    at_half = stats.ttest_1samp(rng.normal(half, 1.0, size=(40_000, k)), 0.0, axis=1).pvalue < 0.05
    assert at_half.mean() == pytest.approx({3: 0.61, 5: 0.55}[k], abs=0.015)
    assert math.isnan(detectable_effect(Estimate(0.0, se, -1.0, 1.0, 1, method="seeds")))
    assert math.isnan(detectable_effect(None))
    with pytest.raises(ValueError, match="power"):
        detectable_effect(Estimate(0.0, se, -1.0, 1.0, k, method="seeds"), power=1.0)


def test_the_verdicts_state_the_effect_each_design_detects(tmp_path: Path) -> None:
    d = _studies(tmp_path / "runs")
    main([str(d["sf16"]), str(d["sf2"]), "--out", str(tmp_path / "out")])
    table = _verdicts((tmp_path / "out" / "report.md").read_text())
    assert "| detectable (80% power) |" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("| a |"))
    detectable = float(line.split("|")[5])
    # sf16 - sf2 per seed: -0.2, -0.24, -0.14 (2 df); 5.6535 * se is the noncentrality at
    # which a 2-df two-sided 5% t test has 80% power (checked by simulation above)
    se = np.array([-0.2, -0.24, -0.14]).std(ddof=1) / math.sqrt(3)
    assert detectable == pytest.approx(5.6535 * se, abs=1e-4)


def _spelled(folder: Path, asked: str | None, ran: str | None) -> None:
    """Set the monitor's ``precision`` as the config spells it (None: the option absent, a
    version before it) and as the run recorded it in ``methods.json`` (None: no record)."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    args = cfg["trainer"]["callbacks"][0]["init_args"]
    args.pop("precision", None)
    if asked is not None:
        args["precision"] = asked
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    record: dict = {"methods": [{"method": "simple_grad", "label": "simple_grad"}]}
    if ran is not None:
        record["settings"] = {"fit": {"precision": ran, "methods": ["simple_grad"]}}
    (folder / "methods.json").write_text(json.dumps(record))


def test_a_default_spelled_otherwise_that_ran_the_same_does_not_split_a_setting(
    tmp_path: Path,
) -> None:
    """The driver's sf-2 seeds 0-1 ran with ``precision: '32'`` (the old default), seeds 2-4
    with ``'auto'`` (the new one), all on a CPU, where ``auto`` is float32 and the record says
    ``"32"``: one setting, and the verdict is computed. ``auto`` that ran as bf16 (a CUDA run)
    is another setting, and a run recorded without settings keeps its config's spelling."""
    root = tmp_path / "runs"
    runs = [_run(root / f"s{s}", 2, s, 0.30 + 0.01 * s) for s in range(3)]
    _spelled(runs[0], "32", "32")
    _spelled(runs[1], "auto", "32")
    _spelled(runs[2], "auto", "32")
    loaded = load_runs(root)
    assert len({r.signature for r in loaded}) == 1
    assert '"precision": "32"' in str(loaded[0].signature)
    _spelled(runs[2], "auto", "bf16")
    assert len({r.signature for r in load_runs(root)}) == 2
    _spelled(runs[2], "auto", None)  # no record: 'auto' as spelled, unlike the others' '32'
    assert len({r.signature for r in load_runs(root)}) == 2
    _spelled(runs[2], None, "32")  # an option the config does not name is not added
    assert len({r.signature for r in load_runs(root)}) == 2
    _spelled(runs[2], "32", None)
    assert len({r.signature for r in load_runs(root)}) == 1


def test_a_number_one_seed_did_not_log_does_not_split_its_setting(tmp_path: Path) -> None:
    """Seed 0 of the CIFAR-10 re-run was written before the input-bounds share existed: its
    AdaptGrad row held None where seeds 1 and 4 held an Estimate, so the seed table split the
    setting into a one-seed row and a two-seed row (whose share was averaged over 2 of 3
    seeds under a "2 seeds" label). Now: one row of 3 seeds; the numbers every seed logged
    are averaged over all three, the share is NaN with the count of seeds that lack it."""
    from types import SimpleNamespace

    from lightning_saliency.report.seeds import seed_table
    from lightning_saliency.report.table import Row, Table

    def est(v: float) -> Estimate:
        return Estimate(v, 0.001, v - 0.002, v + 0.002, 64)

    rows = [Row(name, {"method": "adapt_grad_c0.95", "variant": "adapt", "gini": est(g),
                       "share": None if name == "seed0" else est(0.0036)})
            for name, g in (("seed0", 0.3883), ("seed1", 0.3819), ("seed4", 0.3838))]  # fmt: skip
    runs = [SimpleNamespace(name=r.run, signature="sf2") for r in rows]
    table = seed_table(Table("adaptgrad", (), rows, x="variant", x_name="variant"), runs)
    assert table is not None and len(table.rows) == 1
    (row,) = table.rows
    assert row.run == "3 seeds: seed0, seed1, seed4" and row["variant"] == "adapt"
    gini, ref = row.estimate("gini"), stats.t.interval(0.95, 2, loc=np.mean([0.3883, 0.3819, 0.3838]),
                                                        scale=stats.sem([0.3883, 0.3819, 0.3838]))  # fmt: skip
    assert gini is not None and gini.n == 3 and gini.lo == pytest.approx(ref[0])
    share = row.estimate("share")
    assert share is not None and math.isnan(share.value) and (share.n, share.nonfinite) == (3, 1)
    # a label that differs still separates rows (identity is every cell that is no number)
    rows[2] = Row("seed4", {**rows[2].cells, "variant": "smooth"})
    split = seed_table(Table("adaptgrad", (), rows, x="variant", x_name="variant"), runs)
    assert split is not None and sorted(r.run for r in split.rows) == ["2 seeds: seed0, seed1",
                                                                        "seed4"]  # fmt: skip
