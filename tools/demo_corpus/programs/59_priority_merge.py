import heapq

morning = [1, 4, 9, 12]
afternoon = [2, 3, 10]
evening = [5, 6, 11]

merged = list(heapq.merge(morning, afternoon, evening))
print(merged)
print("three largest:", heapq.nlargest(3, merged))
print("median:", merged[len(merged) // 2])
