from udagram_cli import app

app()
