CONFIG = """
# server settings
host = example.org
port = 8080
debug = false
"""


def parse(text):
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=")
        settings[key.strip()] = value.strip()
    return settings


settings = parse(CONFIG)
port = int(settings["port"])
print(f"connecting to {settings['host']}:{port + 1}")
