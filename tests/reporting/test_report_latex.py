"""The LaTeX table is ready for a paper: booktabs, a label, $\\pm$ and $-$, the teacher row, a short
caption, and each table fits one column of a two-column article (compiled with pdflatex where installed)."""

import shutil
import subprocess

import pytest
from test_report import KD, KD_VAM, STUDENT, STUDENT_VAM, seeds

from kdbench import reporting

TEACHER = {"sha256": "ab" * 32, "test_top1": 74.31}


def _records():
    records = seeds(STUDENT, method="student", teacher=None)
    records += seeds(STUDENT_VAM, method="student", teacher=None, vam=True)
    records += seeds(KD, extra_params=0) + seeds(KD_VAM, vam=True)
    records += seeds([68.1, 68.5, 67.9], method="crd+kd", extra_params=3_300_000)  # below the student
    records += seeds([70.2, 70.0, 70.7], method="rkd") + seeds([69.9, 70.1, 70.0], method="fitnet", vam=True)
    for record in records:
        if record["spec"]["teacher"]:
            record["teacher"] = TEACHER
    return records


@pytest.fixture(scope="module")
def latex():
    return reporting.render(reporting.leaderboard(_records(), reporting.load_published()), "latex")


def test_the_latex_table_reads_as_a_papers(latex):
    assert latex.count(r"\toprule") == 2 and r"\label{tab:kdbench-cifar100}" in latex
    assert r"\label{tab:kdbench-cifar100-costs}" in latex
    body = latex.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    assert r"$\pm$" in body and "(n=" not in body and "±" not in body
    assert "$-$" in body and " -1" not in body  # crd+kd's negative delta has a minus sign, not a hyphen
    first_row = body.split(r"\midrule", 1)[1].strip().splitlines()[0]
    assert first_row.startswith("teacher & 74.31")
    caption = latex.split(r"\caption{", 1)[1].split("}\n", 1)[0]
    assert len(caption) < 300 and "over 3 seeds" in caption
    assert "α" not in latex.replace("%", "\n%").split("\\begin{table}", 1)[1]  # no raw unicode in the body


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_each_table_compiles_and_fits_one_column_of_a_two_column_article(latex, tmp_path):
    document = (
        "\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        + latex
        + "\\end{document}\n"
    )
    (tmp_path / "paper.tex").write_text(document)
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert result.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log, log[log.index("Overfull") :][:500]
    assert "table*" not in latex  # one pair: both tables are a column wide
