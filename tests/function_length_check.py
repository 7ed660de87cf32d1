#!/usr/bin/env python3
"""No function of the product is longer than a reader can hold (issue 14: 120 lines).

Usage: tests/function_length_check.py [--max N] [--list] [FILE...]

Without FILE, checks every C++ file git knows outside tests/ and *_test.cpp (tests may be
long: a test reads top to bottom); outside a git clone, every *.cpp and *.h outside build
directories. Prints each function over the limit as FILE:LINE: NAME is N lines, and exits 1 if
there is any; --list prints every function over 60 lines too, longest first, and exits 0.
The meson test `function_length` runs it without arguments.

One exemption, and only one: a function that is a data table rather than logic (a table of
config keys, an HTML page in a raw string) may carry, on the line right before its first line,

    // function-length: data table (why it is one)

with a non-empty reason in the parentheses. It is then not judged; --list shows it with its
reason, and the summary counts it, so an exemption stays visible.

How it finds functions (the tree is clang-formatted, which keeps this simple): a small lexer
drops comments, string and character literals and preprocessor lines, then follows braces. A
`{` at namespace or class scope opens a function body when the text before it (back to the
previous `;`, `{` or `}`) holds a `(` and does not start with namespace / class / struct /
union / enum / extern: data tables (`= {...}`) are not functions. Lambdas and local classes
count as lines of the function around them.
"""
import argparse
import os
import re
import subprocess
import sys

LIMIT = 120
LIST_OVER = 60
# The exemption comment: exactly this wording, a reason required.
EXEMPTION = re.compile(r"^\s*// function-length: data table \((?P<reason>.*\S.*)\)\s*$")
SCOPE_WORDS = ("namespace", "class", "struct", "union", "enum", "extern")


def strip_code(text):
    """The text with comments, literals and preprocessor lines blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c == "#":
            # A preprocessor line, with its continuations.
            while i < n and text[i] != "\n":
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    out.append("\n")
                    i += 2
                    continue
                i += 1
            continue
        if c == "/" and text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("\n" * text.count("\n", i, end))
            i = end
            continue
        raw = re.match(r'R"([^(\s]*)\(', text[i:i + 20]) if c == "R" else None
        if raw and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = ")" + raw.group(1) + '"'
            end = text.find(close, i + raw.end())
            end = n if end < 0 else end + len(close)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
            continue
        if c in "\"'":
            # A digit separator (1'000) is not a character literal.
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
            continue
        out.append(c)
        if c == "\n":
            at_line_start = True
        elif not c.isspace():
            at_line_start = False
        i += 1
    return "".join(out)


def is_scope(head):
    head = re.sub(r"^template\s*<.*?>\s*", "", head, flags=re.S)
    return head.split(None, 1)[0] in SCOPE_WORDS if head else False


def function_name(head):
    before_paren = head.split("(", 1)[0].split()
    return before_paren[-1] if before_paren else head[:40]


def exemption(lines, first):
    """The reason of the data-table exemption on the line before line `first` (1-based)."""
    if first < 2:
        return None
    m = EXEMPTION.match(lines[first - 2])
    return m.group("reason").strip() if m else None


def functions(text):
    """(first line, line count, name) of every function body at namespace or class scope."""
    code = strip_code(text)
    found = []
    stack = []  # for each open brace: "scope", "function" or "other"
    head_start = 0
    lines_before = [0] * (len(code) + 1)
    for k, ch in enumerate(code):
        lines_before[k + 1] = lines_before[k] + (ch == "\n")
    open_at = []
    for k, ch in enumerate(code):
        if ch not in "{};":
            continue
        in_decl_scope = all(kind == "scope" for kind in stack)
        if ch == ";":
            if in_decl_scope:
                head_start = k + 1
            continue
        if ch == "{":
            head = code[head_start:k].strip()
            if not in_decl_scope:
                kind = "inner"
            elif is_scope(head):
                kind = "scope"
            elif "(" in head and not head.startswith("=") and "=" not in head.split("(", 1)[0]:
                kind = "function"
            else:
                kind = "other"
            stack.append(kind)
            first = lines_before[head_start + (len(code[head_start:k]) -
                                               len(code[head_start:k].lstrip()))] + 1
            open_at.append((first, head))
            if in_decl_scope:
                head_start = k + 1
            continue
        # "}"
        if not stack:
            continue
        kind = stack.pop()
        first, head = open_at.pop()
        if kind == "function":
            last = lines_before[k] + 1
            found.append((first, last - first + 1, function_name(head)))
        if all(kind == "scope" for kind in stack):
            head_start = k + 1
    return found


def product_files(root):
    git = subprocess.run(["git", "-C", root, "ls-files", "*.cpp", "*.h"],
                         capture_output=True, text=True, check=False)
    if git.returncode == 0:
        listed = git.stdout.split()
    else:  # not a clone (a release tarball): every C++ file outside build directories
        listed = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(("build", ".")))
            rel = os.path.relpath(folder, root)
            listed += [os.path.normpath(os.path.join(rel, n)) for n in sorted(names)
                       if n.endswith((".cpp", ".h"))]
    return [os.path.join(root, f) for f in listed
            if not f.startswith("tests/") and not f.endswith("_test.cpp")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max", type=int, default=LIMIT)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = args.files or product_files(root)
    rows = []  # (line count, path, first line, name, exemption reason or None)
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")
        for first, count, name in functions(text):
            rows.append((count, os.path.relpath(path, root), first, name, exemption(lines, first)))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    if args.list:
        for count, path, first, name, reason in rows:
            if count > LIST_OVER:
                exempt = f" (exempt: data table: {reason})" if reason else ""
                print(f"{path}:{first}: {name} is {count} lines{exempt}")
        return 0
    over = [r for r in rows if r[0] > args.max and r[4] is None]
    exempt = [r for r in rows if r[0] > args.max and r[4] is not None]
    for count, path, first, name, _ in over:
        print(f"{path}:{first}: {name} is {count} lines (the limit is {args.max})")
    print(f"function_length_check: {len(files)} files, {len(rows)} functions, "
          f"{len(over)} over {args.max} lines, {len(exempt)} data tables exempt")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
