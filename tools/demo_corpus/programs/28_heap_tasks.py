import heapq

tasks = [(3, "write report"), (1, "fix bug"), (2, "review PR"), (1, "deploy")]


def schedule(tasks):
    heap = list(tasks)
    heapq.heapify(heap)
    order = []
    while heap:
        priority, name = heapq.heappop(heap)
        order.append(f"[{priority}] {name}")
    return order


print("\n".join(schedule(tasks)))
