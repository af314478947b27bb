"""The ``ssmir`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

from pathlib import Path

import typer

import ssmir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Image restoration with visual state-space (Mamba-family) models.")


def _version(value: bool):
    if value:
        typer.echo(f"ssmir {ssmir.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")):
    """ssmir: EAMamba, MambaIRv2 and EmambaIR with a selective scan that needs no CUDA build."""


@app.command("models")
def models_cmd():
    """List the architectures and the model-zoo entries (task, architecture, parameters, weights)."""
    import ssmir.models as M
    from ssmir.models.zoo import entries

    typer.echo("Architectures (ssmir.models.create):")
    for name in M.list():
        doc = (M.get(name).__doc__ or "").strip().splitlines()[0]
        typer.echo(f"  {name:15s} {doc}")
    typer.echo("\nZoo entries (--model NAME; official weights are user-supplied with --weights FILE):")
    typer.echo(f"  {'name':30s} {'architecture':15s} {'parameters':>12s}  {'weights':10s} task")
    for e in entries().values():
        weights = "bundled" if e.bundled_weights else "user"
        typer.echo(f"  {e.name:30s} {e.arch:15s} {e.parameters():12,d}  {weights:10s} {e.task}")


@app.command("inspect")
def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint: official .pth, BasicSR .pth or ssmir .safetensors."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name, for files that do not say."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON with the architecture args "
                                          "(a `model: {name, args}` section or the args themselves)."),
    raw: bool = typer.Option(False, "--raw", help="Load the raw weights instead of the EMA ones."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                          help="Allow full unpickling (only for files you trust)."),
):
    """Load a checkpoint, check it fits its architecture, and print what it is."""
    from ssmir.models.loading import CheckpointError, load_model

    name, args = arch, None
    if config is not None:
        name, args = _read_model_config(config, name)
    try:
        model = load_model(checkpoint, name=name, args=args, ema=not raw, trust_pickle=trust_checkpoint)
    except (CheckpointError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    cfg = model.ssmir_config
    n = sum(p.numel() for p in model.parameters())
    typer.echo(f"{checkpoint}: {cfg['name']}, {n:,} parameters, weights load strictly")
    typer.echo(f"args: {cfg['args']}")


def _read_model_config(path: Path, name: str | None):
    import yaml

    if not path.is_file():
        typer.echo(f"error: --config {path}: no such file", err=True)
        raise typer.Exit(2)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        typer.echo(f"error: --config {path}: not valid YAML/JSON ({e})", err=True)
        raise typer.Exit(2) from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return data["model"].get("name", name), data["model"].get("args", {})
    if not isinstance(data, dict):
        typer.echo(f"error: --config {path}: expected a mapping of architecture args", err=True)
        raise typer.Exit(2)
    return name, data


if __name__ == "__main__":
    app()
