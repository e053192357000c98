"""Import boundaries: the model zoo, the HME included, loads without the explain analysis and its report
stack. Each check runs in a fresh interpreter, so modules other tests imported do not hide a leak."""

import subprocess
import sys


def _run(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return the words it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_importing_the_models_loads_neither_pandas_nor_matplotlib():
    code = "import sys, kdbench.models; print(*(m for m in ('pandas', 'matplotlib') if m in sys.modules))"
    assert _run(code) == []


def test_the_hme_is_registered_like_any_model():
    code = (
        "import sys; from kdbench.models import build_model; "
        "model = build_model('hme_small', num_classes=10, in_chans=1); "
        "print(type(model).__module__, type(model).__name__, 'kdbench.explain' in sys.modules)"
    )
    assert _run(code) == ["kdbench.models.hme", "HME", "False"]
