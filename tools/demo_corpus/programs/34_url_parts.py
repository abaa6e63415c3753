from urllib.parse import urlparse, parse_qs

url = "https://shop.example.com/search?q=red+shoes&size=42&page=2"
parts = urlparse(url)
query = parse_qs(parts.query)

print("host:", parts.netloc)
print("path:", parts.path)
print("search for:", query["q"][0])
print("next page:", int(query["page"][0]) + 1)
