LINES = ["  id,score ", "1, 90", "2, 75 ", "", "3,88", "# comment", "4, 61"]


def stripped(lines):
    for line in lines:
        yield line.strip()


def data_rows(lines):
    for line in lines:
        if line and not line.startswith("#") and not line.startswith("id"):
            yield line


def parsed(rows):
    for row in rows:
        ident, score = row.split(",")
        yield int(ident), int(score)


scores = dict(parsed(data_rows(stripped(LINES))))
print(scores)
print("passed:", [i for i, s in scores.items() if s >= 70])
