def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1


numbers = [2, 3, 5, 7, 11, 13, 17, 19, 23]
for target in (7, 23, 4):
    print(target, "->", binary_search(numbers, target))
