import math
from dataclasses import dataclass


@dataclass
class Circle:
    radius: float

    def area(self):
        return math.pi * self.radius ** 2


@dataclass
class Rect:
    width: float
    height: float

    def area(self):
        return self.width * self.height


shapes = [Circle(1.5), Rect(2, 3), Circle(0.5)]
total = sum(shape.area() for shape in shapes)
print(f"{len(shapes)} shapes, total area {total:.2f}")
print("largest:", max(shapes, key=lambda s: s.area()))
