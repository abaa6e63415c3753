from datetime import date, timedelta

start = date(2024, 1, 15)
deadline = start + timedelta(days=45)


def weekdays_between(a, b):
    days = 0
    current = a
    while current < b:
        if current.weekday() < 5:
            days += 1
        current += timedelta(days=1)
    return days


print("deadline:", deadline.isoformat())
print("working days:", weekdays_between(start, deadline))
