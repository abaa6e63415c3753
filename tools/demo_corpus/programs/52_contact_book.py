contacts = {
    "alice": {"phone": "555-0101", "city": "Paris"},
    "bob": {"phone": "555-0199", "city": "Oslo"},
}


def lookup(name, field):
    return contacts[name.lower()][field]


def add(name, phone, city):
    contacts[name.lower()] = {"phone": phone, "city": city}


add("Carol", "555-0150", "Rome")
for name in ("Alice", "carol"):
    print(name, lookup(name, "phone"), lookup(name, "city"))
print(len(contacts), "contacts")
