import statistics

readings = [
    [21.5, 22.0, 23.1],
    [19.8, 20.4, 21.0],
    [25.2, 24.8, 26.1],
]


def column(matrix, index):
    return [row[index] for row in matrix]


for index, label in enumerate(["morning", "noon", "evening"]):
    values = column(readings, index)
    print(f"{label:<8} median={statistics.median(values):.1f} stdev={statistics.stdev(values):.2f}")
