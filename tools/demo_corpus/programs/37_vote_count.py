ballots = ["green", "blue", "green", "red", "blue", "green", "blue", "blue"]


def tally(ballots):
    counts = {}
    for choice in ballots:
        counts[choice] = counts.get(choice, 0) + 1
    return counts


def winner(counts):
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    name, votes = ranked[0]
    share = votes / sum(counts.values())
    return name, share


counts = tally(ballots)
name, share = winner(counts)
print(counts)
print(f"{name} wins with {share:.0%}")
