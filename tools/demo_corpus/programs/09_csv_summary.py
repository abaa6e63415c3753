import csv
import io

DATA = """city,population,area
Lyon,513275,47.87
Nice,342669,71.92
Lille,232741,34.83
"""

rows = list(csv.DictReader(io.StringIO(DATA)))
for row in rows:
    density = int(row["population"]) / float(row["area"])
    print(f"{row['city']:<6} {density:,.0f} people/km2")
largest = max(rows, key=lambda r: int(r["population"]))
print("largest:", largest["city"])
