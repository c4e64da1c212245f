"""The one table cell every report writes."""
from gpuops.markdown import cell


def test_a_cell_cannot_break_its_row_and_says_when_there_is_nothing():
    assert cell("a | b\nc") == "a \\| b c"
    assert cell(None) == "-" and cell(41.5) == "41.5" and cell(True) == "true"
    assert cell({"b": 1, "a": "x|y"}) == '{"a": "x\\|y", "b": 1}'
