from collections import defaultdict

edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]
graph = defaultdict(list)
for src, dst in edges:
    graph[src].append(dst)


def paths(graph, start, goal, path=()):
    path = path + (start,)
    if start == goal:
        return [path]
    found = []
    for nxt in graph[start]:
        found.extend(paths(graph, nxt, goal, path))
    return found


for p in paths(graph, "a", "e"):
    print(" -> ".join(p))
