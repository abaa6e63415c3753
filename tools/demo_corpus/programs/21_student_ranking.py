students = [
    {"name": "Lin", "grade": 91, "age": 17},
    {"name": "Omar", "grade": 85, "age": 16},
    {"name": "Priya", "grade": 91, "age": 16},
]


def rank(students):
    ordered = sorted(students, key=lambda s: (-s["grade"], s["name"]))
    return [(position + 1, s["name"]) for position, s in enumerate(ordered)]


for position, name in rank(students):
    print(position, name)
