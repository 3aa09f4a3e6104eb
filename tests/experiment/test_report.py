"""What the stored runs say (mixout_theory.experiment.report), on synthetic records with numbers
worked out by hand: Figure 2's summaries, claims and table; the ablations' failure rule, summaries,
paired differences, trajectory summaries, claims and the checks notebook 04 asserts.

The records come from tests/experiment/conftest.py (its docstring holds the table of values).
"""

import csv
import math

import numpy as np
import pytest

from mixout_theory.experiment import report

SOURCE_NAME = "stand-in: EMNIST-style MNIST (not EMNIST)"
CAPTION = (
    f"source task: {SOURCE_NAME} -> target: MNIST | profile: smoke | 3 restarts per setting, mean +- 1 std | "
    "config 0123456789ab"
)


# --------------------------------------------------------------------------------------- Figure 2


def test_summarise_mean_std_and_shared_p0():
    recs = [{"method": "none", "p": 0.0, "seed": s, "x": float(s)} for s in range(3)] + [
        {"method": m, "p": 0.5, "seed": s, "x": 10.0 + s + (m == "mixout")}
        for m in ("dropout", "mixout")
        for s in range(3)
    ]
    rows = report.summarise(recs, metrics=("x",))
    assert [(r["method"], r["p"], r["n"]) for r in rows] == [
        ("dropout", 0.0, 3),
        ("dropout", 0.5, 3),
        ("mixout", 0.0, 3),
        ("mixout", 0.5, 3),
    ]
    assert rows[0]["x_mean"] == 1.0 and rows[0]["x_std"] == pytest.approx(1.0)  # ddof = 1
    assert rows[3]["x_mean"] == 12.0


def test_summarise_the_sweep_records(sweep_records):
    rows = report.summarise(sweep_records)
    assert [(r["method"], r["p"], r["n"]) for r in rows] == [
        ("dropout", 0.0, 3),
        ("dropout", 0.4, 3),
        ("dropout", 0.8, 3),
        ("mixout", 0.0, 3),
        ("mixout", 0.4, 3),
        ("mixout", 0.8, 3),
    ]
    by = {(r["method"], r["p"]): r for r in rows}
    # the p = 0 run ("none") is listed under both methods, with the same numbers
    assert {k: v for k, v in by["dropout", 0.0].items() if k != "method"} == {
        k: v for k, v in by["mixout", 0.0].items() if k != "method"
    }
    none = by["mixout", 0.0]  # dist_mixed 10, 11, 12; dist_fc1 1, 1.5, 2; source 0.99, 0.98, 0.97
    assert (none["dist_mixed_mean"], none["dist_mixed_std"]) == (11.0, 1.0)
    assert (none["dist_fc1_mean"], none["dist_fc1_std"]) == (1.5, 0.5)
    assert (none["dist_fc2_mean"], none["dist_fc2_std"]) == (8.25, 0.75)
    assert (none["dist_fc3_mean"], none["dist_fc3_std"]) == (2.75, 0.25)
    assert (none["dist_all_mean"], none["dist_all_std"]) == (12.625, 1.5)  # 11.125, 12.625, 14.125
    assert none["source_val_acc_mean"] == pytest.approx(0.98, abs=1e-12)
    assert none["source_val_acc_std"] == pytest.approx(0.01, abs=1e-12)
    m8 = by["mixout", 0.8]
    assert (m8["dist_mixed_mean"], m8["dist_mixed_std"], m8["dist_all_mean"]) == (3.0, 1.0, 8.625)
    assert m8["target_val_acc_mean"] == pytest.approx(0.95, abs=1e-12)
    assert m8["target_test_acc_mean"] == pytest.approx(0.945, abs=1e-12)
    assert by["dropout", 0.4]["source_val_acc_std"] == pytest.approx(0.0, abs=1e-12)  # 0.95 three times
    assert by["dropout", 0.8]["source_val_acc_std"] == pytest.approx(0.02, abs=1e-12)
    assert set(report.SUMMARY_METRICS) == {
        "dist_all",
        "dist_mixed",
        "dist_fc1",
        "dist_fc2",
        "dist_fc3",
        "target_val_acc",
        "target_test_acc",
        "source_val_acc",
    }
    one = report.summarise([r for r in sweep_records if r["seed"] == 0])
    assert all(r["n"] == 1 and r["dist_mixed_std"] == 0.0 for r in one)  # a single restart has no spread


def test_figure2_claims_hold_on_the_synthetic_sweep(sweep_records):
    c = report.figure2_claims(sweep_records)
    assert c["mixed_distance_decreasing_every_restart"] is True
    assert c["mixed_distance_margin"] == pytest.approx(4.0)  # means 11 -> 7 -> 3, std 1
    assert c["source_acc_gaps"] == {0.4: 0.01, 0.8: 0.03}  # (0.02, 0.01, 0) and (0.06, 0.03, 0) per restart
    assert c["source_acc_mixout_ge_dropout"] is True
    assert c["report"] == [
        "mixout dist_mixed mean by p: 0.0: 11.0000, 0.4: 7.0000, 0.8: 3.0000",
        "decreasing in every one of 3 restarts: True; smallest drop = 4.0 std",
        "source acc, mixout - dropout by p: 0.4: +0.0100, 0.8: +0.0300",
    ]


def test_figure2_claims_detect_a_rising_distance_and_a_negative_gap(sweep_records):
    rec = next(r for r in sweep_records if (r["method"], r["p"], r["seed"]) == ("mixout", 0.8, 2))
    rec["dist_mixed"] = 9.0  # restart 2: 8 at p = 0.4, then 9 at p = 0.8
    c = report.figure2_claims(sweep_records)
    assert c["mixed_distance_decreasing_every_restart"] is False
    # p = 0.8 now 2, 3, 9: mean 14/3, sample variance 43/3; the drop from p = 0.4 is 7 - 14/3
    assert c["mixed_distance_margin"] == pytest.approx((7 - 14 / 3) / math.sqrt(43 / 3))
    for r in sweep_records:
        if (r["method"], r["p"]) == ("dropout", 0.8):
            r["source_val_acc"] = 0.97  # mixout - dropout = -0.01, -0.02, -0.03
    c = report.figure2_claims(sweep_records)
    assert c["source_acc_gaps"] == {0.4: 0.01, 0.8: -0.02}
    assert c["source_acc_mixout_ge_dropout"] is False


def test_experiment_meta_and_caption(sweep_records):
    meta = report.experiment_meta(sweep_records)
    assert meta == {
        "source": "stand-in",
        "source_name": SOURCE_NAME,
        "profile": "smoke",
        "config": "0123456789ab",
        "restarts": 3,
        "runs": 15,
    }
    assert report.caption(meta) == CAPTION
    assert report.caption(dict(meta, source_name="")).startswith(
        "source task: stand-in -> target: MNIST | profile: smoke"
    )
    assert "mean with its 95% CI (t, n - 1 dof)" in report.caption(meta, band="ci95")


def test_task_line_names_emnist_orientation_and_the_stand_in():
    assert report.task_line("EMNIST Digits") == (
        "source task: EMNIST Digits (transposed to MNIST's orientation) -> target: MNIST"
    )
    assert report.task_line(SOURCE_NAME) == f"source task: {SOURCE_NAME} -> target: MNIST"


def test_band_halfwidth_is_std_or_the_t_interval():
    from scipy import stats

    np.testing.assert_allclose(report.band_halfwidth([1.0, 2.0], [10, 10]), [1.0, 2.0])
    t9 = stats.t.ppf(0.975, 9)
    assert t9 == pytest.approx(2.2621572)  # the tabulated t_{0.975, 9}
    np.testing.assert_allclose(report.band_halfwidth([1.0, 2.0], [10, 1], "ci95"), [t9 / 10**0.5, 0.0])
    # the interval covers the true mean of normal samples 95% of the time (fixed seed; binomial sd 0.7%)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 5))
    half = report.band_halfwidth(x.std(axis=1, ddof=1), 5, "ci95")
    assert abs(np.mean(np.abs(x.mean(axis=1)) <= half) - 0.95) < 0.005
    with pytest.raises(ValueError, match="band must be one of"):
        report.band_halfwidth(1.0, 3, "sem")


def test_summary_table_writes_csv_and_markdown(sweep_records, tmp_path):
    summary = report.summarise(sweep_records)
    out = tmp_path / "figs" / "experiment"
    paths = report.summary_table(summary, report.experiment_meta(sweep_records), out)
    assert paths == [out / "table.csv", out / "table.md"]
    text = (out / "table.csv").read_text()
    assert "\r" not in text
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == ["method", "p", "n"] + [
        f"{c}_{s}" for c in report.TABLE_COLUMNS for s in ("mean", "std")
    ]
    assert [(r["method"], float(r["p"]), int(r["n"])) for r in rows] == [
        (r["method"], r["p"], 3) for r in summary
    ]
    assert float(rows[5]["dist_mixed_mean"]) == 3.0 and float(rows[5]["dist_all_std"]) == 1.5
    md = (out / "table.md").read_text().splitlines()
    assert md[0] == f"<!-- {CAPTION} -->" and md[1] == f"*{CAPTION}*" and md[2] == ""
    assert md[3] == (
        "| method | p | n | dist_all | dist_mixed | dist_fc1 | target_val_acc | target_test_acc | "
        "source_val_acc |"
    )
    assert md[4] == "|---|---|---|---|---|---|---|---|---|"
    assert len(md) == 5 + 6
    assert md[5].startswith(
        "| dropout | 0.0 | 3 | 12.6250 +- 1.5000 | 11.0000 +- 1.0000 | 1.5000 +- 0.5000 |"
    )
    assert md[-1] == (
        "| mixout | 0.8 | 3 | 8.6250 +- 1.5000 | 3.0000 +- 1.0000 | 5.5000 +- 0.5000 | "
        "0.9500 +- 0.0100 | 0.9450 +- 0.0100 | 0.9500 +- 0.0100 |"
    )
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md"]  # no temporaries left


# --------------------------------------------------------------------------------------- ablations


def _rec(size, setting, restart, acc, order=0):
    return {
        "size": size,
        "setting": setting,
        "label": setting,
        "restart": restart,
        "order": order,
        "test_acc": acc,
        "dist_mixed": 1.0,
        "dist_all": 2.0,
    }


def test_failure_rule_and_summary():
    good = [0.90, 0.91, 0.92, 0.91]
    bad = [0.91, 0.50, 0.88, 0.90]
    recs = [_rec(100, "a", r, v, 0) for r, v in enumerate(good)] + [
        _rec(100, "b", r, v, 1) for r, v in enumerate(bad)
    ]
    th = report.failure_thresholds(recs, w_pre_acc=0.8)
    sd = float(np.std(good, ddof=1))
    assert th["best_setting"] == "a" and th["best_median"] == pytest.approx(0.91)
    assert th["outlier_below"] == pytest.approx(0.91 - 3 * sd) and th["failed_below"] == 0.8
    rows = {r["setting"]: r for r in report.summarise_runs(recs, 0.8)}
    assert rows["a"]["failed"] == 0 and rows["b"]["failed"] == 1  # only the 0.50 run is below w_pre
    assert rows["b"]["outliers"] == 2  # 0.50 and 0.88 are more than 3 sd (0.0245) below 0.91
    assert rows["b"]["mean"] == pytest.approx(np.mean(bad)) and rows["b"]["max"] == 0.91
    assert rows["b"]["std"] == pytest.approx(np.std(bad, ddof=1))
    table = report.markdown_table(list(rows.values()), [("setting", "setting"), ("mean", "mean")], digits=3)
    assert table.splitlines()[2] == "| a | 0.910 |"


def test_failure_thresholds_and_summaries_of_the_small_data_study(ablation_records):
    small = ablation_records["small_data"]
    th = report.failure_thresholds(small, 0.80)
    # medians 0.85, 0.87, 0.88, 0.87, 0.89: the best is mixout0.8+l2sp0.01 (0.89, 0.88, 0.90: sd 0.01)
    assert th["best_setting"] == "mixout0.8+l2sp0.01" and th["best_median"] == pytest.approx(0.89)
    assert th["best_sd"] == pytest.approx(0.01) and th["outlier_below"] == pytest.approx(0.86)
    assert th["failed_below"] == 0.80
    rows = report.summarise_runs(small, 0.80)
    assert [r["setting"] for r in rows] == [
        "dropout0.1+wd0.01",
        "mixout0.7",
        "mixout0.8",
        "mixout0.9",
        "mixout0.8+l2sp0.01",
    ]  # study order
    by = {r["setting"]: r for r in rows}
    usual = by["dropout0.1+wd0.01"]  # 0.85, 0.70, 0.87
    assert (usual["size"], usual["n"], usual["label"]) == (100, 3, "dropout(0.1) + wdecay(0, 0.01)")
    assert usual["mean"] == pytest.approx(2.42 / 3)
    assert usual["std"] == pytest.approx(
        math.sqrt(((0.85 - 2.42 / 3) ** 2 + (0.70 - 2.42 / 3) ** 2 + (0.87 - 2.42 / 3) ** 2) / 2)
    )
    assert (usual["min"], usual["median"], usual["max"]) == (0.70, 0.85, 0.87)
    assert (usual["failed"], usual["outliers"]) == (1, 2)  # 0.70 < 0.80; 0.85 and 0.70 < 0.86
    assert [(by[k]["failed"], by[k]["outliers"]) for k in ("mixout0.7", "mixout0.8", "mixout0.9")] == [
        (0, 0),
        (0, 0),
        (0, 1),
    ]
    assert (
        by["mixout0.8"]["dist_mixed"] == 2.0 and by["mixout0.8"]["dist_all"] == 4.0
    )  # 1 + r, 3 + r averaged
    assert "dist_fc3_w0" not in usual
    head = {r["setting"]: r for r in report.summarise_runs(ablation_records["new_head"], 0.80)}
    assert head["head-none"]["dist_fc3_w0"] == 3.0 and head["head-mixout-w0-0.7"]["dist_fc3_w0"] == 1.25
    assert head["head-none"]["failed"] == 0  # 0.80 is not below 0.80


def test_paired_differences_and_trajectory_summary():
    recs = [_rec(10, "a", k, 0.9 + 0.01 * k) for k in range(3)] + [
        _rec(10, "b", k, 0.9 + 0.02 * k) for k in range(3)
    ]
    (row,) = report.paired_differences(recs, pairs=(("a", "b"),))
    assert row["n"] == 3 and row["mean_diff"] == pytest.approx(-0.01)
    assert (row["a_wins"], row["ties"], row["b_wins"]) == (0, 1, 2)

    def run(p, restart, ms):
        cps = [
            {
                "step": 10 * (i + 1),
                "m": m,
                "m_lo": m - 0.01,
                "m_hi": m + 0.01,
                "loss": 1.0 / (i + 1),
                "dist2": 0.1,
                "lam": m * p / (1 - p),
                "epoch": i + 1,
            }
            for i, m in enumerate(ms)
        ]
        return {
            "p": p,
            "restart": restart,
            "size": 30,
            "eval_size": 30,
            "mc_samples": 8,
            "test_acc": 0.9,
            "checkpoints": cps,
        }

    (t,) = report.trajectory_summary([run(0.8, 0, [0.1, 0.5, 0.2]), run(0.8, 1, [0.3, 0.7, 0.2])])
    assert t["m_first"] == pytest.approx(0.2) and t["m_peak"] == pytest.approx(0.6) and t["peak_step"] == 20
    assert t["m_last"] == pytest.approx(0.2) and t["peak_over_last"] == pytest.approx(3.0)
    assert t["lam_peak"] == pytest.approx(0.6 * 4) and t["loss_last"] == pytest.approx(1 / 3)
    # and the rest of the row: the lower bounds after the first checkpoint are 0.49, 0.19, 0.69, 0.19
    assert (t["restarts"], t["checkpoints"], t["first_step"], t["last_step"]) == (2, 3, 10, 30)
    assert t["min_m_lo_after_first"] == pytest.approx(0.19) and t["loss_peak"] == pytest.approx(0.5)
    assert t["lam_last"] == pytest.approx(0.8) and t["test_acc"] == pytest.approx(0.9)


def test_paired_differences_of_the_default_pairs(make_ablation_record):
    acc = {
        "mixout0.8": (0.90, 0.91, 0.92, 0.93),
        "dropout0.1+wd0.01": (0.91, 0.91, 0.90, 0.93),
        "mixout0.5": (0.80, 0.80, 0.80, 0.80),
    }
    recs = [
        make_ablation_record(s, name, r, a)
        for s in (30, 100)
        for name, v in acc.items()
        for r, a in enumerate(v)
    ]
    rows = report.paired_differences(recs)
    # of the default pairs only (mixout0.8, dropout0.1+wd0.01) is stored; at both sizes
    assert [(r["size"], r["a"], r["b"]) for r in rows] == [
        (30, "mixout0.8", "dropout0.1+wd0.01"),
        (100, "mixout0.8", "dropout0.1+wd0.01"),
    ]
    row = rows[0]  # differences -0.01, 0, +0.02, 0
    assert row["n"] == 4 and (row["a_wins"], row["ties"], row["b_wins"]) == (1, 2, 1)
    assert row["mean_diff"] == pytest.approx(0.0025)
    assert row["sd_diff"] == pytest.approx(math.sqrt((0.0125**2 + 0.0025**2 + 0.0175**2 + 0.0025**2) / 3))
    (diff,) = report.paired_differences(
        [r for r in recs if r["size"] == 30], pairs=(("mixout0.5", "mixout0.8"),), metric="dist_mixed"
    )
    assert diff["mean_diff"] == 0.0 and diff["ties"] == 4  # dist_mixed = 1 + restart in every setting


def test_markdown_table_formats_cells():
    rows = [{"a": 1, "b": 0.5, "c": 1e-6, "d": 0.0, "e": "x"}, {"a": 22, "b": -12.25, "c": -2e-5, "d": 3.0}]
    table = report.markdown_table(rows, [("a", "A"), "b", ("c", "C"), "d", ("e", "E")], digits=3)
    assert table.splitlines() == [
        "| A | b | C | d | E |",
        "|---|---|---|---|---|",
        "| 1 | 0.500 | 1.00e-06 | 0.000 | x |",
        "| 22 | -12.250 | -2.00e-05 | 3.000 |  |",  # a missing key is an empty cell
    ]
    assert report.markdown_table([], ["a"]) == "| a |\n|---|"
    assert [h for _, h in report.SUMMARY_COLUMNS][:3] == ["n train", "setting", "runs"]
    assert (
        report.HEAD_COLUMNS[-1][0] == "dist_fc3_w0"
        and report.HEAD_COLUMNS[:-1] == report.SUMMARY_COLUMNS[:-1]
    )


def test_trajectory_summary_rows_and_checks(ablation_records):
    traj = ablation_records["trajectory"]  # m_t (0.1, 0.5, 0.2) at p = 0.5, (0.3, 0.35, 0.2) at p = 0.8
    a, b = report.trajectory_summary(traj)
    assert (a["p"], a["restarts"], a["checkpoints"], a["first_step"], a["peak_step"], a["last_step"]) == (
        0.5,
        1,
        3,
        10,
        20,
        30,
    )
    assert (a["m_first"], a["m_peak"], a["m_last"]) == (0.1, 0.5, 0.2)
    assert a["peak_over_last"] == pytest.approx(2.5) and a["lam_peak"] == pytest.approx(
        0.5
    )  # p / (1 - p) = 1
    assert (
        a["lam_last"] == pytest.approx(0.2)
        and a["loss_peak"] == 0.5
        and a["loss_last"] == pytest.approx(1 / 3)
    )
    assert a["min_m_lo_after_first"] == pytest.approx(0.19) and a["test_acc"] == 0.9
    assert (
        b["p"] == 0.8
        and b["peak_over_last"] == pytest.approx(1.75)
        and b["lam_peak"] == pytest.approx(0.35 * 4)
    )
    rows = report.trajectory_rows(list(reversed(traj)))
    assert [(r["p"], r["step"]) for r in rows] == [
        (0.5, 10),
        (0.5, 20),
        (0.5, 30),
        (0.8, 10),
        (0.8, 20),
        (0.8, 30),
    ]
    assert {"p", "restart", "size", "eval_size", "mc_samples", "epoch", "m", "m_lo", "lam", "dist2"} <= set(
        rows[0]
    )
    assert rows[4]["m"] == 0.35 and rows[4]["size"] == 300 and rows[4]["mc_samples"] == 96
    checks = report.trajectory_checks(traj)
    assert checks["checkpoints_after_first"] == 4  # epochs 2 and 3 of both runs
    assert checks["min_m_lo_after_first"] == pytest.approx(0.1)  # 0.49, 0.19, 0.25, 0.1
    assert checks["runs"] == [
        {
            "p": 0.5,
            "restart": 0,
            "first_m": 0.1,
            "first_step": 10,
            "peak_m": 0.5,
            "peak_step": 20,
            "last_m": 0.2,
            "peak_above_first": True,
        },  # 0.49 > 0.11
        {
            "p": 0.8,
            "restart": 0,
            "first_m": 0.3,
            "first_step": 10,
            "peak_m": 0.35,
            "peak_step": 20,
            "last_m": 0.2,
            "peak_above_first": False,
        },  # 0.25 < 0.4
    ]


def test_claims_of_the_synthetic_studies(ablation_records):
    small_recs = ablation_records["small_data"]
    small = report.summarise_runs(small_recs, 0.80)
    head = report.summarise_runs(ablation_records["new_head"], 0.80)
    traj = report.trajectory_summary(ablation_records["trajectory"])
    c = report.claims(small, head, traj, small_recs)
    # best mixout(p >= 0.7) by mean is mixout0.8 (0.88) against the usual recipe's 2.42 / 3
    assert c["mixout_fewer_failures"] == {100: (0, 1)}
    assert c["mixout_mean_gain"][100] == pytest.approx(0.88 - 2.42 / 3)
    assert c["mixout_wd_gain"][100] == pytest.approx(0.01)  # 0.89 - 0.88
    mean, sd = c["paired_gain_mixout0.8"][100]  # 0.03, 0.17, 0.02 restart by restart
    assert mean == pytest.approx(0.22 / 3)
    assert sd == pytest.approx(
        math.sqrt(((0.03 - 0.22 / 3) ** 2 + (0.17 - 0.22 / 3) ** 2 + (0.02 - 0.22 / 3) ** 2) / 2)
    )
    assert c["head"] == {100: "head-mixout-w0-0.7"}  # means 0.81, 0.84, 0.85
    assert c["m_peak_over_last"] == {0.5: pytest.approx(2.5), 0.8: pytest.approx(1.75)}
    without = report.claims(small, head, traj)
    assert (
        without["paired_gain_mixout0.8"] == {}
        and without["mixout_fewer_failures"] == c["mixout_fewer_failures"]
    )


def test_pairing_check(ablation_records):
    small = ablation_records["small_data"]
    assert report.pairing_check(small) == (True, 3)
    assert report.pairing_check(ablation_records["new_head"]) == (True, 2)
    small[4]["mask_seed"] += 1  # one run of one setting drew other masks
    assert report.pairing_check(small) == (False, 3)
    assert report.pairing_check(ablation_records["new_head"][1:]) == (False, 1)  # a restart missing


def test_mixed_distance_ratios(make_ablation_record):
    d = {
        0: {"mixout0.5": 10.0, "mixout0.7": 5.0, "mixout0.8": 4.0, "mixout0.9": 1.0},
        1: {"mixout0.5": 6.0, "mixout0.7": 3.0, "mixout0.8": 3.0},
    }  # restart 1 has no mixout0.9
    recs = [
        make_ablation_record(100, s, r, 0.9, dist_mixed=v) for r, row in d.items() for s, v in row.items()
    ]
    recs.append(
        make_ablation_record(100, "dropout0.1+wd0.01", 0, 0.9, dist_mixed=99.0)
    )  # not a mixout setting
    recs += [
        make_ablation_record(300, s, 0, 0.9, dist_mixed=v)
        for s, v in (("mixout0.8", 2.0), ("mixout0.9", 0.5))
    ]
    assert report.mixed_distance_ratios(recs) == [0.5, 0.8, 0.25, 0.5, 1.0, 0.25]
    assert report.mixed_distance_ratios(recs, settings=("mixout0.9", "mixout0.5")) == [10.0]


def test_head_pull_ratios(ablation_records):
    # ||w_fc3 - w_0||^2: head-none 4.0, 2.0; head-mixout-w0-0.7 1.0, 1.5 (restarts 0, 1)
    assert report.head_pull_ratios(ablation_records["new_head"]) == [0.25, 0.75]
    no_mixout = [r for r in ablation_records["new_head"] if r["setting"] != "head-mixout-w0-0.7"]
    assert report.head_pull_ratios(no_mixout) == []
