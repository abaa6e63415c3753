import json

settings = {"theme": "dark", "font_size": 14, "plugins": ["git", "lint"]}
text = json.dumps(settings, indent=2, sort_keys=True)
print(text)

loaded = json.loads(text)
loaded["font_size"] += 2
print("font size now", loaded["font_size"])
print("plugins:", ", ".join(loaded["plugins"]))
