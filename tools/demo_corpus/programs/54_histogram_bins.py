import math

samples = [2.3, 4.1, 4.8, 5.0, 6.7, 7.2, 7.9, 8.8, 9.5, 1.2]


def bins(values, width):
    counts = [0] * math.ceil(max(values) / width)
    for value in values:
        counts[int(value // width)] += 1
    return counts


for index, count in enumerate(bins(samples, 2.5)):
    low = index * 2.5
    print(f"{low:4.1f}-{low + 2.5:4.1f} {'*' * count}")
