from pathlib import Path

Path("notes").mkdir()
Path("notes/a.txt").write_text("alpha\nbeta\n")
Path("notes/b.txt").write_text("gamma\n")
Path("notes/c.md").write_text("# title\n\nbody\n")


def line_counts(folder, suffix):
    counts = {}
    for path in sorted(Path(folder).glob("*" + suffix)):
        counts[path.name] = len(path.read_text().splitlines())
    return counts


print(line_counts("notes", ".txt"))
print(line_counts("notes", ".md"))
