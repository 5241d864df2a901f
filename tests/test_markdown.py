from lmmixup.markdown import markdown_table


def test_table_aligns_numbers_right_from_the_given_column():
    lines = markdown_table(["arm", "rows", "score"], [["a", 3, "0.5000"]], right_from=1)
    assert lines == ["| arm | rows | score |", "|---|---:|---:|", "| a | 3 | 0.5000 |"]


def test_table_is_left_aligned_by_default_and_takes_any_iterable():
    lines = markdown_table(["size", "records"], {2: 5}.items())
    assert lines == ["| size | records |", "|---|---|", "| 2 | 5 |"]
