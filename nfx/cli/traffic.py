"""nfx traffic run"""
import typer

app = typer.Typer(no_args_is_help=True, help="Generate traffic through a testbed and check it at the sink.")
