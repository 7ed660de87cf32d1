"""The function-length checker bites: it fails on a function over 120 lines, and its one
exemption (a data table, named on the line before) is as narrow as it says.

Runs tests/function_length_check.py on synthetic C++ files in a temporary directory.
"""
import os
import subprocess
import sys

CHECKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "function_length_check.py")


def function(name, lines, before=""):
    """A C++ function `name` spanning exactly `lines` lines (signature to closing brace)."""
    body = "".join(f"  x += {i};\n" for i in range(lines - 3))
    return f"{before}int {name}(int x) {{\n{body}  return x;\n}}\n"


def check(tmp_path, text, *args):
    path = tmp_path / "sample.cpp"
    path.write_text(text, encoding="utf-8")
    return subprocess.run([sys.executable, CHECKER, *args, str(path)], capture_output=True,
                          text=True, timeout=60)


def test_a_function_of_120_lines_passes(tmp_path):
    run = check(tmp_path, function("fits", 120))
    assert run.returncode == 0, run.stdout
    assert "0 over 120 lines" in run.stdout


def test_a_function_of_121_lines_fails_and_is_named_with_its_line(tmp_path):
    run = check(tmp_path, "// a file\n\n" + function("short", 10) + function("too_long", 121))
    assert run.returncode == 1
    assert "sample.cpp:13: too_long is 121 lines (the limit is 120)" in run.stdout
    assert "short" not in run.stdout
    assert "1 over 120 lines" in run.stdout


def test_a_member_function_and_its_lambdas_count_as_one(tmp_path):
    lambda_body = "".join(f"    y += {i};\n" for i in range(60))
    rest = "".join(f"  x += {i};\n" for i in range(60))
    text = ("namespace a {\nstruct S {\n  int run(int x);\n};\n"
            f"int S::run(int x) {{\n  auto f = [&](int y) {{\n{lambda_body}    return y;\n  }};\n"
            f"{rest}  return f(x);\n}}\n}}  // namespace a\n")
    run = check(tmp_path, text)
    assert run.returncode == 1
    assert "sample.cpp:5: S::run is 126 lines" in run.stdout


def test_braces_in_strings_comments_and_data_tables_are_not_functions(tmp_path):
    table = "".join(f"    {{{i}, \"{{\"}},\n" for i in range(200))
    text = (f"const int kTable[][2] = {{\n{table}}};\n"
            "// a stray { in a comment\n"
            'const char* kRaw = R"(\n{ { {\n)";\n' + function("small", 20))
    run = check(tmp_path, text)
    assert run.returncode == 0, run.stdout


def test_a_data_table_with_its_comment_and_reason_is_exempt_and_listed(tmp_path):
    before = "// function-length: data table (every key of the sample, one line each)\n"
    run = check(tmp_path, function("key_table", 300, before))
    assert run.returncode == 0, run.stdout
    assert "0 over 120 lines, 1 data tables exempt" in run.stdout
    listed = check(tmp_path, function("key_table", 300, before), "--list")
    assert ("sample.cpp:2: key_table is 300 lines "
            "(exempt: data table: every key of the sample, one line each)") in listed.stdout


def test_no_other_comment_exempts_a_function(tmp_path):
    for before in ("// function-length: data table ()\n",  # no reason
                   "// function-length: data table\n",
                   "// function-length: skip (it is fine)\n",
                   "// NOLINT(function-length)\n",
                   # not on the line right before
                   "// function-length: data table (a table)\n\n",
                   "/* function-length: data table (a table) */\n"):
        run = check(tmp_path, function("long_logic", 130, before))
        assert run.returncode == 1, before
        assert "long_logic is 130 lines (the limit is 120)" in run.stdout, before


def test_the_limit_can_be_lowered(tmp_path):
    run = check(tmp_path, function("medium", 61), "--max", "60")
    assert run.returncode == 1
    assert "medium is 61 lines (the limit is 60)" in run.stdout
