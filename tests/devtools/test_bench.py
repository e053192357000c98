"""`kdbench bench` measures every ratio it names (values are never asserted: they are timings)."""

from kdbench.devtools.bench import run_bench


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
        "2 runs one after another",
    )
    for expected in (*expected_measures, "bare fp32 KD", "classic: ", "precision: ", "compile: "):
        assert any(m.startswith(expected) for m in measures), expected
    assert all(row["seconds"] > 0 and row["ratio"] > 0 and row["throughput_x"] > 0 for row in rows)
    by_name = {row["measure"]: row for row in rows}
    for row in rows:  # images/s counts every run a work trains (a cohort of 2 trains 2 x 128 images)
        assert row["images_per_s"] == row["runs"] * 128 / row["seconds"]
        reference = by_name[row["reference"]]
        assert row["throughput_x"] == row["images_per_s"] / reference["images_per_s"]
    cohort = next(row for row in rows if row["measure"].startswith("cohort: "))
    assert cohort["runs"] == 2


def test_throughput_compares_works_of_different_sizes():
    from kdbench.devtools.bench import _with_throughput

    rows = _with_throughput(
        [
            {"measure": "one run", "seconds": 2.0, "reference": "one run", "runs": 1},
            {"measure": "four runs at once", "seconds": 4.0, "reference": "one run", "runs": 4},
        ],
        images=100,
    )
    assert rows[1]["ratio"] == 2.0 and rows[1]["throughput_x"] == 2.0 and rows[1]["images_per_s"] == 100.0


def test_concurrent_cohorts_train_in_separate_processes(tmp_path):
    """The one-card measure (run on CUDA by `kdbench bench --device cuda`) works end to end on the CPU."""
    from kdbench.devtools.bench import _concurrent_cohorts_seconds

    options = dict(
        dataset="synthetic",
        student="resnet8",
        teacher="resnet14",
        train_images=64,
        batch_size=32,
        data_root=None,
        out=str(tmp_path),
        device="cpu",
        dataset_options={"num_train": 64, "num_test": 32, "image_size": 16},
    )
    assert _concurrent_cohorts_seconds(options, ("student", "kd"), workers=2) > 0
