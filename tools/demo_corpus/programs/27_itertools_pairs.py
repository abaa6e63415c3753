import itertools

teams = ["lions", "tigers", "bears", "wolves"]
fixtures = list(itertools.combinations(teams, 2))
print(len(fixtures), "matches")
for round_number, (home, away) in enumerate(fixtures[:3], start=1):
    print(f"round {round_number}: {home} v {away}")

groups = itertools.groupby(sorted(teams, key=len), key=len)
for size, names in groups:
    print(size, list(names))
