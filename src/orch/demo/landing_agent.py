"""The landing scenario's developer: standard library only. It does what its ticket says, as two
careless developers would: one renames `word_count` everywhere it finds it, the other adds a
caller of whichever name the code it sees has."""

import os
import sys


def main() -> int:
    title = os.environ.get("ORCH_TICKET_TITLE", "")
    key = os.environ.get("ORCH_TICKET", "")
    if title.startswith("Rename"):
        for folder, dirs, files in os.walk("."):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                    if "word_count" in text:
                        with open(path, "w", encoding="utf-8") as f:
                            f.write(text.replace("word_count", "count_words"))
    else:
        with open("sample/text.py", encoding="utf-8") as f:
            name = "count_words" if "def count_words" in f.read() else "word_count"
        with open("sample/stats.py", "w", encoding="utf-8") as f:
            f.write(
                '"""Totals over many texts."""\n\n'
                f"from sample.text import {name}\n\n\n"
                "def total_words(texts: list[str]) -> int:\n"
                f"    return sum({name}(t) for t in texts)\n"
            )
        with open("tests/test_stats.py", "w", encoding="utf-8") as f:
            f.write(
                "import unittest\n\nfrom sample.stats import total_words\n\n\n"
                "class TotalWordsTest(unittest.TestCase):\n"
                "    def test_adds_the_words_of_every_text(self):\n"
                '        self.assertEqual(total_words(["a b", "c"]), 3)\n'
            )
    os.makedirs(f"docs/work-items/{key}", exist_ok=True)
    with open(f"docs/work-items/{key}/changes.md", "w", encoding="utf-8") as f:
        f.write(f"# Changes for {key}\n\n- {title}\n")
    print(f"{key}: {title}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
