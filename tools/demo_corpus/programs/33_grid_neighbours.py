GRID = [
    "..#.",
    ".##.",
    "....",
]


def neighbours(grid, row, col):
    count = 0
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            r, c = row + dr, col + dc
            if 0 <= r < len(grid) and 0 <= c < len(grid[0]) and grid[r][c] == "#":
                count += 1
    return count


for row in range(len(GRID)):
    print("".join(str(neighbours(GRID, row, col)) for col in range(len(GRID[0]))))
