"""The comparison table of tools/eval.py: every column in its place, percent with two decimals, nan and '-'.

The expected lines are written by hand from the table's definition (fixed widths: 2, 30, 6 per metric, 7).
"""

import math

from detector.evaluation.report import COLUMNS, LEGEND, format_markdown, format_table, json_safe

ROWS = [
    {"model": "roi_align", "source": "runs/a/model_final.pth", "images_per_second": 7.26, "AP": 0.1234, "AP50": 0.5,
     "AP75": 0.0, "APs": None, "APm": float("nan"), "APl": 1.0, "AR100": 1 / 3, "VOC07": 2 / 3, "VOC": 0.005,
     "TP_IoU": 0.75},
    {"model": "results", "source": "r.json", "AP": 0.25},  # a results file: no speed, missing columns
]


def test_columns_are_the_coco_metrics_then_recall_voc_and_iou():
    assert COLUMNS == ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "VOC07", "VOC", "TP_IoU")


def test_text_table():
    lines = format_table(ROWS).split("\n")
    assert lines[0] == (" #  model                              AP   AP50   AP75    APs    APm    APl  AR100  VOC07"
                        "    VOC TP_IoU   img/s  source")
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == (" 0  roi_align                       12.34  50.00   0.00    nan    nan 100.00  33.33  66.67"
                        "   0.50  75.00     7.3  runs/a/model_final.pth")
    assert lines[3] == (" 1  results                         25.00    nan    nan    nan    nan    nan    nan    nan"
                        "    nan    nan       -  r.json")
    assert lines[4:] == [LEGEND]


def test_markdown_table():
    assert format_markdown(ROWS) == (
        "| # | model | AP | AP50 | AP75 | APs | APm | APl | AR100 | VOC07 | VOC | TP_IoU | img/s | source |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        "| 0 | roi_align | 12.34 | 50.00 | 0.00 | nan | nan | 100.00 | 33.33 | 66.67 | 0.50 | 75.00 | 7.3 |"
        " `runs/a/model_final.pth` |\n"
        "| 1 | results | 25.00 | nan | nan | nan | nan | nan | nan | nan | nan | nan | - | `r.json` |\n"
        "\n" + LEGEND + "\n"
    )


def test_no_rows_is_the_header_and_legend():
    assert format_markdown([]).count("\n") == 4 and format_table([]).split("\n")[2:] == [LEGEND]


def test_json_safe_turns_nan_into_null_at_any_depth():
    nan = float("nan")
    got = json_safe({"a": nan, "b": [1.0, nan, (nan, "x")], "c": {"d": nan, "e": 0.5}, "f": None, "g": math.inf})
    assert got == {"a": None, "b": [1.0, None, [None, "x"]], "c": {"d": None, "e": 0.5}, "f": None, "g": math.inf}
