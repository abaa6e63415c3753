import statistics

scores = {"alice": [88, 92, 79], "bob": [65, 70, 81], "carol": [95, 98, 91]}


def report(scores):
    for name in sorted(scores):
        marks = scores[name]
        mean = statistics.mean(marks)
        print(f"{name:<6} mean={mean:.1f} best={max(marks)}")
    best = max(scores, key=lambda n: statistics.mean(scores[n]))
    print("top student:", best)


report(scores)
