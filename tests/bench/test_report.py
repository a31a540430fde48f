"""The report builds from small hand-made CSVs, with the expected mean +- std and its figures."""

import pandas as pd

from bench.report import ReportInputs, build_report, main_table, mean_std


def _results():
    rows = []
    for method, mious in {"acseg": [20.0, 22.0, 24.0], "kmeans": [18.0, 19.0, 20.0]}.items():
        for crf in (False, True):
            for seed, m in enumerate(mious):
                rows.append({"dataset": "camvid", "split": "val", "method": method, "backbone": "vit", "weights": "w",
                             "resolution": "336x448", "feature_type": "tokens", "crf": crf, "seed": seed,
                             "miou": m + crf, "acc": 50.0 + seed, "iou_Sky": 80.0, "iou_Road": 60.0 + seed})
    return pd.DataFrame(rows)


def _ablations():
    rows = [{"dataset": "camvid", "split": "val", "axis": "prototypes", "value": k, "seed": s, "miou": k + s, "acc": 50}
            for k in (2, 5, 10) for s in (0, 1, 2)]
    rows += [{"dataset": "camvid", "split": "val", "axis": "loss", "value": v, "seed": s, "miou": m, "acc": 40}
             for v, m in (("modularity", 20), ("distortion", 15)) for s in (0, 1)]
    return pd.DataFrame(rows)


def test_mean_std_is_sample_std_over_seeds():
    assert mean_std(pd.Series([20.0, 22.0, 24.0])) == "22.00 +- 2.00"
    assert mean_std(pd.Series([7.0])) == "7.00 (1 seed)"


def test_main_table_has_methods_with_and_without_crf_their_ci_and_the_difference_from_the_floor():
    from scipy import stats

    table = main_table(_results())
    acseg = table[(table.method == "ACSeg") & (table.CRF == "no")].iloc[0]
    assert acseg["mIoU (%)"] == "22.00 +- 2.00" and acseg["accuracy (%)"] == "51.00 +- 1.00" and acseg.seeds == 3
    assert table[(table.method == "ACSeg") & (table.CRF == "yes")].iloc[0]["mIoU (%)"] == "23.00 +- 2.00"
    assert len(table) == 4
    low, high = stats.t.interval(0.95, 2, loc=22.0, scale=2.0 / 3 ** 0.5)
    assert acseg["95% CI"] == f"[{low:.2f}, {high:.2f}]"
    p = stats.ttest_ind([20.0, 22.0, 24.0], [18.0, 19.0, 20.0], equal_var=False).pvalue
    assert acseg["vs floor"] == "+3.00" and acseg["p (Welch)"] == f"{p:.3f}"
    floor = table[(table.method == "DINO k-means (floor)") & (table.CRF == "no")].iloc[0]
    assert floor["vs floor"] == "" and floor["p (Welch)"] == ""


def test_a_report_never_mixes_datasets(tmp_path):
    other = _results().assign(dataset="stanford_background", miou=lambda d: d.miou + 10)
    both = pd.concat([_results(), other], ignore_index=True)
    text = build_report(ReportInputs(both), tmp_path).read_text()
    assert "## CamVid-11 (SegNet split), val split" in text and "## Stanford Background" in text
    assert (tmp_path / "figures/per_class_iou_camvid.png").is_file()
    assert (tmp_path / "figures/per_class_iou_stanford_background.png").is_file()
    import pytest

    with pytest.raises(ValueError, match="one dataset"):
        main_table(both)


def test_report_builds_from_csvs_with_tables_figures_and_provenance(tmp_path):
    concepts = pd.DataFrame({"seed": [0, 0, 1], "image": ["a", "b", "a"], "concepts": [4, 5, 4]})
    path = build_report(ReportInputs(_results(), _ablations(), {"camvid": concepts}, command="dvc repro",
                                     config_hash="abc123", git_commit="deadbeef"), tmp_path)
    text = path.read_text()
    assert "| ACSeg" in text and "22.00 +- 2.00" in text and "23.00 +- 2.00" in text
    assert "### number of prototypes k" in text and "6.00 +- 1.00" in text  # k=5: 5, 6, 7
    assert "### loss" in text and "20.00 +- 0.00" in text
    assert "`deadbeef`" in text and "`abc123`" in text and "`dvc repro`" in text
    assert "best mean mIoU at k=10" in text
    for name in ("per_class_iou_camvid", "prototypes", "loss_variants", "concepts_per_image_camvid"):
        png = tmp_path / "figures" / f"{name}.png"
        assert png.stat().st_size > 5000, name
        assert f"figures/{name}.png" in text


def test_each_ablation_table_compares_with_the_flagged_default_point_wherever_it_sits():
    """k=10 is the default and comes last in its sweep: the other values are compared with it, not with the first."""
    from bench.report import axis_tables

    a = _ablations().assign(default=lambda d: (d.axis == "prototypes") & (d.value == 10))
    a.loc[a.axis == "loss", "default"] = a.value == "modularity"
    table = axis_tables(a)["prototypes"].set_index("number of prototypes k")
    assert table.loc[10, "vs default"] == "(default)" and table.loc[2, "vs default"] == "-8.00"
    assert table.loc[2, "mIoU (%)"].endswith("*")  # 2, 3, 4 against 10, 11, 12
    assert axis_tables(a.drop(columns="default"))["prototypes"].iloc[0]["vs default"] == "(default)"
