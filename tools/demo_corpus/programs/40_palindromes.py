def is_palindrome(text):
    letters = [ch.lower() for ch in text if ch.isalnum()]
    return letters == letters[::-1]


phrases = ["A man, a plan, a canal: Panama", "Hello, world", "Was it a car or a cat I saw?"]
for phrase in phrases:
    verdict = "yes" if is_palindrome(phrase) else "no"
    print(f"{verdict:>3}  {phrase}")
