"""Core CLI command for sharing adapters: ``push`` (a library adapter to the Hugging Face Hub)."""

from __future__ import annotations

import json

from typing import Annotated

import typer

from ..hookspecs import hookimpl


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command()
    def push(
        name: Annotated[str, typer.Argument(help="The library adapter to publish.")],
        repo_id: Annotated[str, typer.Argument(help="Hub repository, 'user/name' or 'org/name' (created if missing).")],
        private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
        message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a sentence.")] = False,
    ) -> None:
        """
        Upload a library adapter to the Hugging Face Hub as a PEFT repository with a model card.

        The token is HF_TOKEN or the one saved by `hf auth login`; HF_ENDPOINT picks another hub.
        """
        from ..hub import push_adapter

        result = push_adapter(name, repo_id, private=private, commit_message=message)
        if as_json:
            typer.echo(json.dumps({"repo_id": result.repo_id, "url": result.url, "commit": result.commit,
                                   "files": list(result.files), "private": result.private}, indent=2))
            return
        visibility = "private" if result.private else "public"
        typer.echo(f"Pushed {name} to {result.url} ({visibility}; {', '.join(result.files)})")
        typer.echo(f"Others can now run: adaptrix convert hf://{result.repo_id} --name {name}")
