"""The published CIFAR-100 rows of DOT and SSKD in registry/published.json (each read from its
authors' README at the commit its source names): every row of their tables, under RepDistiller's
model names, and no more."""

from __future__ import annotations

from kdbench import reporting

DOT = {  # mdistiller README a08d46f, 'DOT: Main Benchmark Results', CIFAR-100, KD+DOT
    ("resnet32x4", "resnet8x4"): 75.12,
    ("vgg13", "vgg8"): 73.77,
    ("resnet32x4", "ShuffleV2"): 75.55,
}
SSKD = {  # xuguodong03/SSKD README 661b972, 'Results (Top-1 Acc) on CIFAR100', the SSKD row
    ("wrn_40_2", "wrn_16_2"): 76.04,
    ("wrn_40_2", "wrn_40_1"): 76.13,
    ("resnet56", "resnet20"): 71.49,
    ("resnet32x4", "resnet8x4"): 76.20,
    ("vgg13", "vgg8"): 75.33,
    ("vgg13", "mobile_half"): 71.53,
    ("ResNet50", "mobile_half"): 72.57,
    ("ResNet50", "vgg8"): 75.76,
    ("resnet32x4", "ShuffleV1"): 78.44,
    ("resnet32x4", "ShuffleV2"): 78.61,
    ("wrn_40_2", "ShuffleV1"): 77.40,
}


def test_dot_and_sskd_rows_are_their_readmes_tables():
    published = reporting.load_published()
    for method, table in {"dot": DOT, "sskd": SSKD}.items():
        rows = {
            (e["teacher"], e["student"]): e["top1"]
            for e in published["entries"]
            if e["method"] == method and e["dataset"] == "cifar100"
        }
        assert rows == table, method
        assert all(e["source"] == method for e in published["entries"] if e["method"] == method)
        assert published["sources"][method]["url"].startswith("https://github.com/")
