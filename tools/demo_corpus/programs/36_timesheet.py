from datetime import datetime

entries = [("09:00", "12:30"), ("13:15", "17:45"), ("18:00", "19:10")]
FMT = "%H:%M"


def hours(entries):
    total = 0
    for start, end in entries:
        delta = datetime.strptime(end, FMT) - datetime.strptime(start, FMT)
        total += delta.total_seconds() / 3600
    return total


worked = hours(entries)
print(f"worked {worked:.2f} h, overtime {max(0, worked - 8):.2f} h")
