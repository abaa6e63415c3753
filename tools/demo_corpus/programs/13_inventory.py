inventory = {"apples": 12, "pears": 4, "plums": 0}
orders = [("apples", 5), ("pears", 2), ("apples", 3)]


def fulfil(inventory, orders):
    shipped = []
    for fruit, qty in orders:
        if inventory[fruit] >= qty:
            inventory[fruit] -= qty
            shipped.append(fruit)
    return shipped


print("shipped:", fulfil(inventory, orders))
print("left:", inventory)
