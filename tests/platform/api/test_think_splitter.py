import pytest

from levee.api.think import ThinkSplitter

TEXT = "<think>\nLet me add 2 and 3.\n</think>\n\nThe answer is 5."


def _run(pieces):
    splitter = ThinkSplitter()
    reasoning = content = ""
    for piece in pieces:
        r, c = splitter.push(piece)
        reasoning += r
        content += c
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_it_splits_reasoning_from_content_however_the_text_is_cut(size):
    pieces = [TEXT[i:i + size] for i in range(0, len(TEXT), size)]
    assert _run(pieces) == ("Let me add 2 and 3.\n", "The answer is 5.")


def test_output_without_a_think_block_is_all_content():
    assert _run(["<thi", "nk? no: plain answer"]) == ("", "<think? no: plain answer")


def test_an_unclosed_think_block_stays_reasoning():
    assert _run(["<think>still thinking", " </thin"]) == ("still thinking </thin", "")


def test_a_tag_is_never_emitted_half_way():
    splitter = ThinkSplitter()
    assert splitter.push("<think>abc</th") == ("abc", "")
    assert splitter.push("ink>done") == ("", "done")
