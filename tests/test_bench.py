"""`kdbench bench` measures every ratio it names (values are never asserted: they are timings)."""

from kdbench.bench import run_bench


def test_bench_measures_each_ratio(tmp_path):
    rows = run_bench(methods=("kd",), train_images=128, batch_size=64, repeats=1, out=str(tmp_path))
    measures = [row["measure"] for row in rows]
    assert measures[0].startswith("bare PyTorch loop")
    expected_measures = (
        "layout: ",
        "loader: ",
        "engine: ",
        "VAM: ",
        "method: kd",
        "cohort: ",
        "pool: 2 runs",
    )
    for expected in (*expected_measures, "bare fp32 KD", "classic: ", "precision: ", "compile: "):
        assert any(m.startswith(expected) for m in measures), expected
    assert all(row["seconds"] > 0 and row["ratio"] > 0 for row in rows)
