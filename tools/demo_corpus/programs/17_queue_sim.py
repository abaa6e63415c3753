from collections import deque

arrivals = [("ann", 3), ("ben", 1), ("cat", 4), ("dan", 2)]


def simulate(arrivals):
    queue = deque(arrivals)
    clock = 0
    finished = {}
    while queue:
        name, work = queue.popleft()
        clock += work
        finished[name] = clock
    return finished


times = simulate(arrivals)
print(times)
print("average wait:", sum(times.values()) / len(times))
