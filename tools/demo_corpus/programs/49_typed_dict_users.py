from typing import TypedDict


class User(TypedDict):
    name: str
    email: str
    admin: bool


def describe(user: User) -> str:
    role = "admin" if user["admin"] else "member"
    domain = user["email"].split("@")[1]
    return f"{user['name']} ({role}) at {domain}"


users: list[User] = [
    {"name": "kim", "email": "kim@example.com", "admin": True},
    {"name": "lee", "email": "lee@mail.org", "admin": False},
]
for user in users:
    print(describe(user))
