class Node:
    def __init__(self, value, next=None):
        self.value = value
        self.next = next


def build(values):
    head = None
    for value in reversed(values):
        head = Node(value, head)
    return head


def to_list(head):
    out = []
    while head is not None:
        out.append(head.value)
        head = head.next
    return out


def reverse(head):
    previous = None
    while head:
        head.next, previous, head = previous, head, head.next
    return previous


print(to_list(reverse(build([1, 2, 3, 4]))))
