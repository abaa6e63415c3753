import bisect

BREAKPOINTS = [60, 70, 80, 90]
GRADES = "FDCBA"


def grade(score):
    return GRADES[bisect.bisect(BREAKPOINTS, score)]


scores = [33, 99, 77, 70, 89, 90, 100]
print([grade(score) for score in scores])
