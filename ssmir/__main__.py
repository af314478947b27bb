from ssmir.cli import app

app(prog_name="ssmir")
