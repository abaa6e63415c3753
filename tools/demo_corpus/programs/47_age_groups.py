people = [("Ana", 34), ("Ben", 17), ("Chloe", 65), ("Dev", 42), ("Eve", 12)]


def group(age):
    if age < 18:
        return "minor"
    if age < 65:
        return "adult"
    return "senior"


groups = {}
for name, age in people:
    groups.setdefault(group(age), []).append(name)

for label in ("minor", "adult", "senior"):
    print(f"{label}: {', '.join(groups[label])}")
