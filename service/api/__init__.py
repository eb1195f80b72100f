"""The API process: HTTP routes, request admission, tokenization and text. Never imports torch."""
