def transpose(matrix):
    return [[row[i] for row in matrix] for i in range(len(matrix[0]))]


def multiply(a, b):
    cols = transpose(b)
    return [[sum(x * y for x, y in zip(row, col)) for col in cols] for row in a]


a = [[1, 2], [3, 4]]
b = [[5, 6], [7, 8]]
for row in multiply(a, b):
    print(row)
