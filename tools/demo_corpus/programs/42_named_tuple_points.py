import math
from collections import namedtuple

Point = namedtuple("Point", ["x", "y"])


def distance(p, q):
    return math.hypot(p.x - q.x, p.y - q.y)


def perimeter(points):
    return sum(distance(points[i], points[i - 1]) for i in range(len(points)))


triangle = [Point(0, 0), Point(3, 0), Point(3, 4)]
print(triangle[2])
print("perimeter:", perimeter(triangle))
