import sqlite3

conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE books (title TEXT, author TEXT, year INTEGER)")
conn.executemany("INSERT INTO books VALUES (?, ?, ?)", [
    ("Dune", "Herbert", 1965), ("Emma", "Austen", 1815), ("Ubik", "Dick", 1969),
])
rows = conn.execute("SELECT title, year FROM books WHERE year > ? ORDER BY year", (1900,)).fetchall()
for title, year in rows:
    print(f"{title} ({year})")
print("oldest:", conn.execute("SELECT min(year) FROM books").fetchone()[0])
