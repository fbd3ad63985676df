"""A command that ends with typer.Exit(code) makes the process exit with that code (the CLI runs
click outside its standalone mode, which returns the code instead of exiting)."""
import subprocess
import sys

CODE = """
import sys, typer
from nfx import cli

@cli.app.command("exit-with")
def exit_with(code: int):
    raise typer.Exit(code)

sys.argv = ["nfx", "exit-with", sys.argv[1]]
cli.main()
"""


def test_typer_exit_code_reaches_the_shell():
    for code in (0, 1, 3):
        r = subprocess.run([sys.executable, "-c", CODE, str(code)], capture_output=True, text=True)
        assert r.returncode == code, (code, r.stderr)
