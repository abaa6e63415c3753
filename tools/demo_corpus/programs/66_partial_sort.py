from functools import partial, reduce
import operator

orders = [("widget", 3, 2.5), ("gadget", 1, 10.0), ("doohickey", 5, 1.2)]


def cost(order, discount):
    name, qty, price = order
    return qty * price * (1 - discount)


member_cost = partial(cost, discount=0.1)
costs = list(map(member_cost, orders))
print([round(c, 2) for c in costs])
print("product of quantities:", reduce(operator.mul, (q for _, q, _ in orders)))
