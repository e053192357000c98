"""The leaderboard's statistics (docs/DESIGN.md, "Statistics"): a cell is one configuration, n = distinct
seeds; mean, std, 95 % t-interval; Δ with a Welch p-value Holm-corrected across the methods of a pair;
"best" = not significantly below the top mean; tidy CSV / JSON with numeric columns."""

import io
import json
import math
import statistics

import pandas as pd
import pytest
from scipy import stats
from test_report import PAIR, make_record, seeds

from kdbench import reporting

STUDENT = [69.0, 69.4, 68.8]
KD = [70.5, 70.9, 70.1]


def with_spec(records, **fields):
    """The records with spec fields replaced (hp and recipe merged), e.g. another hyper-parameter."""
    out = []
    for record in records:
        spec = dict(record["spec"])
        for key, value in fields.items():
            spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
        out.append(dict(record, spec=spec, run_id=f"{record['run_id']}-{json.dumps(fields, sort_keys=True)}"))
    return out


def baseline_runs():
    return seeds(STUDENT, method="student", teacher=None)


def test_configurations_of_one_method_are_separate_rows_labelled_by_what_differs():
    t4 = with_spec(seeds(KD), hp={"temperature": 4})
    t2 = with_spec(seeds([v + 1 for v in KD]), hp={"temperature": 2})
    board = reporting.leaderboard(baseline_runs() + t4 + t2)
    assert list(board.table.index) == ["student", "kd (temperature=2)", "kd (temperature=4)"]
    cells = board.stats.set_index("row")
    assert cells.loc["kd (temperature=4)", "mean"] == pytest.approx(statistics.mean(KD))  # never averaged
    assert cells.loc["kd (temperature=2)", "mean"] == pytest.approx(statistics.mean(KD) + 1)
    assert (cells["n"] == 3).all()
    assert any("kd: 2 configurations" in note and "hp.temperature" in note for note in board.notes)

    # another teacher checkpoint is another configuration, shown by the first 6 hex of its SHA-256
    other = with_spec(seeds(KD), teacher_sha256="3f2a1c9e" + "0" * 56)
    board = reporting.leaderboard(baseline_runs() + seeds(KD) + other)
    assert set(board.table.index) == {"student", "kd [teacher unknown]", "kd [teacher 3f2a1c]"}


def test_a_configuration_without_hyper_parameters_beside_one_with_them_gets_a_label():
    bare = seeds(KD)
    tuned = seeds([71.0, 71.2, 70.8])
    for record in tuned:
        record["spec"]["hp"] = {"temperature": 2.0}
    board = reporting.leaderboard(baseline_runs() + bare + tuned)
    labels = [label for label in board.table.index if label.startswith("kd")]
    assert len(labels) == 2 and any("temperature=2.0" in label for label in labels)


def test_settings_that_differ_only_between_pairs_do_not_split_rows():
    # DKD's β is set per pair: one configuration per pair, so the row stays "kd"
    pair_a = with_spec(seeds(KD), hp={"beta": 8})
    pair_b = with_spec(seeds(KD, teacher="resnet110"), hp={"beta": 2})
    board = reporting.leaderboard(baseline_runs() + pair_a + pair_b)
    assert list(board.table.index) == ["student", "kd"]


def test_n_counts_distinct_seeds_and_a_duplicate_is_kept_once_and_noted():
    duplicate = dict(make_record(seed=1, last_top1=99.0), run_id="kd-copy")
    board = reporting.leaderboard(baseline_runs() + seeds(KD) + [duplicate])
    kd = board.stats.set_index("row").loc["kd"]
    assert kd["n"] == 3 and kd["mean"] == pytest.approx(statistics.mean(KD))  # the first of seed 1 is kept
    (note,) = [note for note in board.notes if "seed 1" in note]
    assert "2 finished runs of one configuration" in note and "kd-copy" in note


def test_cell_statistics_match_scipy():
    board = reporting.leaderboard(baseline_runs() + seeds(KD))
    kd = board.stats.set_index("row").loc["kd"]
    sem = statistics.stdev(KD) / math.sqrt(3)
    low, high = stats.t.interval(0.95, 2, loc=statistics.mean(KD), scale=sem)
    assert (kd["ci_low"], kd["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    welch = stats.ttest_ind(KD, STUDENT, equal_var=False).pvalue
    assert kd["p_raw"] == pytest.approx(welch)
    assert kd["p_value"] == pytest.approx(welch)  # one comparison: Holm changes nothing
    assert kd["significant"]
    student = board.stats.set_index("row").loc["student"]
    assert math.isnan(student["delta"]) and math.isnan(student["p_value"]) and not student["significant"]


def test_delta_vam_carries_a_welch_test_holm_corrected_across_the_pair():
    student_vam, kd_vam = [69.0, 69.5, 68.6], [71.0, 71.6, 71.2]
    board = reporting.leaderboard(
        baseline_runs()
        + seeds(KD)
        + seeds(student_vam, method="student", teacher=None, vam=True)
        + seeds(kd_vam, vam=True)
    )
    cells = board.stats.set_index("row")
    raw = {
        "kd +VAM": stats.ttest_ind(kd_vam, KD, equal_var=False).pvalue,
        "student +VAM": stats.ttest_ind(student_vam, STUDENT, equal_var=False).pvalue,
    }
    low, high = sorted(raw, key=raw.get)
    assert cells.loc[low, "vam_p_value"] == pytest.approx(2 * raw[low])
    assert cells.loc[high, "vam_p_value"] == pytest.approx(max(2 * raw[low], raw[high]))
    assert math.isnan(cells.loc["kd", "vam_p_value"])  # VAM off: nothing to compare


def test_holm_adjusts_in_input_order_and_skips_missing_tests():
    assert reporting.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert reporting.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    adjusted = reporting.holm([0.02, math.nan, 0.5])
    assert (
        adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    )
    assert reporting.holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # never below a smaller p's
    assert reporting.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_gains_are_marked_only_when_significant_after_holm():
    # "at" alone would pass p < 0.05 against the baseline (p = 0.049); Holm over the three methods of
    # the pair doubles its p (second smallest), so only the clear gain is marked.
    clear = seeds([v + 3 for v in STUDENT], method="fitnet")
    borderline = seeds([69.7, 70.1, 69.5], method="at")
    noise = seeds([69.3, 68.9, 69.2], method="sp")
    board = reporting.leaderboard(baseline_runs() + clear + borderline + noise)
    cells = board.stats.set_index("row")
    assert cells.loc["at", "p_raw"] < 0.05 <= cells.loc["at", "p_value"]
    assert cells.loc["at", "p_value"] == pytest.approx(min(1, 2 * cells.loc["at", "p_raw"]))
    assert board.significant == {("fitnet", f"{PAIR} Δ")}
    markdown = reporting.render(board, "markdown")
    assert f"| {board.table.loc['fitnet', f'{PAIR} Δ']}† " in markdown
    assert f"| {board.table.loc['at', f'{PAIR} Δ']} " in markdown  # unmarked
    assert r"$^\dagger$" in reporting.render(board, "latex")
    assert "Holm-corrected" in board.caption and "Welch" in board.caption


def test_best_is_every_method_not_significantly_below_the_top():
    top = seeds([72.0, 72.4, 71.6], method="crd")
    close = seeds([71.0, 72.8, 71.5], method="dkd")  # below the top mean, not significantly
    board = reporting.leaderboard(baseline_runs() + seeds(KD) + top + close)
    assert board.best == {("crd", PAIR), ("dkd", PAIR)}
    cells = pd.read_csv(io.StringIO(reporting.render(board, "csv"))).set_index("row")
    assert list(cells.index[cells["best"]]) == ["crd", "dkd"]
    # untestable (one seed each): only the top mean is best
    single = reporting.leaderboard(
        [make_record(seed=0, last_top1=70.0), make_record(method="at", last_top1=69.9)]
    )
    assert single.best == {("kd", PAIR)}


def test_delta_needs_the_student_baseline_of_the_same_configuration():
    other_recipe = with_spec(baseline_runs(), recipe={"epochs": 5})
    board = reporting.leaderboard(other_recipe + seeds(KD))
    assert math.isnan(board.stats.set_index("row").loc["kd", "delta"])
    assert any(
        "kd on" in note and "no student baseline of the same configuration" in note for note in board.notes
    )


def test_csv_and_json_are_tidy_numeric_rows_per_cell():
    records = baseline_runs() + seeds(KD) + seeds(KD, teacher="resnet110")
    board = reporting.leaderboard(records, published=reporting.load_published())
    cells = pd.read_csv(io.StringIO(reporting.render(board, "csv")))
    # VAM's columns are named by its own name (whether a cell applies it, its Δ and p)
    assert {"vam", "vam_delta", "vam_p_value"} <= set(cells.columns)
    assert list(cells.columns) == reporting.tidy_columns(["vam"])
    # student and kd on each of two pairs (the costs table is not appended), then the published rows
    assert len(cells[~cells["published"]]) == 4 and cells["published"].sum() > 0
    assert cells.loc[cells["published"], "std"].isna().all()
    numeric = ["mean", "std", "n", "ci_low", "ci_high", "delta", "p_raw", "p_value", "vam_delta"]
    numeric += ["significant", "best", "vam", "published", *reporting.OVERHEAD_KEYS]
    for column in numeric:
        assert pd.api.types.is_numeric_dtype(cells[column]), (column, cells[column].dtype)
    assert cells["peak_memory_bytes"].iloc[0] == 300 * 2**20  # plain units
    assert set(cells["pair"]) == {PAIR, "resnet110→resnet20"}

    document = json.loads(reporting.render(board, "json"))
    assert "last epoch" in document["caption"] and isinstance(document["notes"], list)
    frame = pd.DataFrame(document["cells"])
    assert list(frame.columns) == reporting.tidy_columns(["vam"])
    kd = frame[(frame["row"] == "kd") & (frame["pair"] == PAIR)].iloc[0]
    assert kd["mean"] == pytest.approx(statistics.mean(KD)) and kd["n"] == 3
    assert frame.loc[frame["row"] == "student", "delta"].isna().all()  # null in JSON, not NaN


def test_a_board_cell_is_a_regression_gate_cell(tmp_path):
    records = baseline_runs() + seeds(KD) + with_spec(seeds(KD), teacher_sha256="ab" * 32)
    baseline = reporting.write_baseline(records, tmp_path / "baseline.json")
    board = reporting.leaderboard(records)
    gate = {json.dumps(cell["config"], sort_keys=True): cell for cell in baseline["cells"]}
    assert set(board.stats["config"]) == set(gate)
    for cell in board.stats.itertuples():
        assert cell.mean == pytest.approx(gate[cell.config]["mean"], abs=1e-4)
        assert cell.n == gate[cell.config]["n"]
