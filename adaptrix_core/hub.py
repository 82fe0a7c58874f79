"""
Share a library adapter on the Hugging Face Hub: a plain PEFT repository with a model card.

What is uploaded is what ``adaptrix export`` writes (``adapter_config.json`` and the weights, which PEFT,
vLLM and ``adaptrix convert hf:REPO`` load) plus a ``README.md`` model card built from the adapter's
``adaptrix.json``: base model, ``library_name: peft``, description, capabilities, evaluation numbers,
training run, lineage, and how to use it. ``adaptrix.json`` itself stays local (it holds local paths).
"""

from __future__ import annotations

import json
import os
import re
import tempfile

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .exceptions import AdaptrixError
from .library import CONFIG_NAME, Library


class PushError(AdaptrixError):
    """The hub refused or could not be reached; nothing partial is left locally."""


@attrs.frozen
class PushResult:
    """Where a pushed adapter went."""

    repo_id: str
    url: str
    commit: str | None
    files: tuple[str, ...]
    private: bool


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _is_hub_id(value: str | None) -> bool:
    return bool(value) and bool(_REPO_ID.match(str(value))) and not Path(str(value)).expanduser().exists()


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


# the model card -------------------------------------------------------------------------


def _evaluation(meta: Mapping[str, Any]) -> list[str]:
    extra = meta.get("extra") or {}
    ev = extra.get("eval") or {}
    if not ev:
        return ["Not evaluated with `adaptrix eval` yet."]
    metric = extra.get("metric", "?")
    return [
        "Scored by `adaptrix eval` (greedy, the same prompts with and without the adapter):",
        "",
        "| metric | held-out prompts | with the adapter | base model alone |",
        "|---|---|---|---|",
        f"| {metric} | {ev.get('n', '?')} | {ev.get('with_adapter', 0):.0%} | {ev.get('without_adapter', 0):.0%} |",
    ]


def _training(meta: Mapping[str, Any]) -> list[str]:
    run = (meta.get("extra") or {}).get("training") or {}
    if not run:
        return []
    options = run.get("options") or {}
    return [
        "## Training",
        "",
        f"`adaptrix train`: {run.get('steps', '?')} steps on {run.get('examples', '?')} examples, loss "
        f"{run.get('first_loss', float('nan')):.3f} -> {run.get('final_loss', float('nan')):.3f}; rank "
        f"{options.get('r', '?')}, alpha {options.get('alpha', '?')}, roles {', '.join(options.get('roles') or [])}, "
        f"layers {options.get('layers', '?')}, lr {options.get('lr', '?')}, seed {options.get('seed', '?')}. "
        f"Dataset sha256 `{run.get('dataset_sha256', '?')}`.",
        "",
    ]


def _lineage(meta: Mapping[str, Any]) -> list[str]:
    lineage = meta.get("lineage")
    if lineage:
        return ["## Lineage", "", "```json", json.dumps(lineage, indent=2, sort_keys=True), "```", ""]
    source = meta.get("source")
    return ["## Lineage", "", f"Made by `{source}`.", ""] if source else []


def _usage(name: str, repo_id: str, base: str, rank: int) -> list[str]:
    return [
        "## How to use",
        "",
        "With Adaptrix (many LoRA adapters on one frozen model; `convert` checks the adapter against the base):",
        "",
        "```bash",
        f"adaptrix convert hf://{repo_id} --name {name} --model {base}",
        f'adaptrix query "Hello!" --adapter {name} --model {base}',
        "```",
        "",
        "With PEFT:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        "```",
        "",
        "With vLLM:",
        "",
        "```bash",
        f"vllm serve {base} --enable-lora --max-lora-rank {max(8, rank)} --lora-modules {name}={repo_id}",
        "```",
        "",
    ]


def model_card(name: str, meta: Mapping[str, Any], repo_id: str, *, adapter_config: Mapping[str, Any]) -> str:
    """The ``README.md`` of a pushed adapter: hub metadata (YAML) and a page a person can act on."""
    from huggingface_hub import ModelCard, ModelCardData

    base = str(meta.get("base_model") or adapter_config.get("base_model_name_or_path") or "")
    report = meta.get("report") or {}
    rank = int(report.get("rank") or adapter_config.get("r") or 8)
    capabilities = [str(c) for c in meta.get("capabilities") or ()]
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["adaptrix", "lora", "peft", *capabilities],
    )
    base_line = f"[{base}](https://huggingface.co/{base})" if _is_hub_id(base) else (f"`{base}`" if base else "unknown")
    modules = sorted({str(m.get("role") or m.get("module")) for m in report.get("modules") or ()})
    body = [
        f"# {name}",
        "",
        str(meta.get("description") or "A LoRA adapter."),
        "",
        f"- **Base model:** {base_line}",
        f"- **Capabilities:** {', '.join(capabilities) or 'none listed'}",
        f"- **Domain:** {meta.get('domain') or 'general'}",
        f"- **LoRA:** rank {rank}, alpha {report.get('alpha', adapter_config.get('lora_alpha', '?'))}, "
        f"{report.get('params', '?')} parameters on {', '.join(modules) or 'see adapter_config.json'} "
        f"({report.get('architecture', 'unknown')} architecture)",
        "",
        "## Evaluation",
        "",
        *_evaluation(meta),
        "",
        *_training(meta),
        *_lineage(meta),
        *_usage(name, repo_id, base or "BASE_MODEL", rank),
    ]
    examples = [str(e) for e in meta.get("examples") or ()][:5]
    if examples:
        body += ["## Example prompts", "", *(f"- {e}" for e in examples), ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


# pushing --------------------------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network errors (huggingface_hub 2.x uses httpx2, 1.x httpx)."""
    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _stage(library: Library, name: str, repo_id: str, directory: Path) -> tuple[str, ...]:
    """Write the repository's files into *directory*: the PEFT export, a hub base model id, the card."""
    meta = library.metadata(name)
    exported = library.export(name, directory / "repo")
    config_path = exported / CONFIG_NAME
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = meta.get("base_model")
    if _is_hub_id(base) and not _is_hub_id(config.get("base_model_name_or_path")):
        config["base_model_name_or_path"] = base  # a local path means nothing to whoever downloads it
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (exported / "README.md").write_text(model_card(name, meta, repo_id, adapter_config=config), encoding="utf-8")
    return tuple(sorted(p.name for p in exported.iterdir()))


def push_adapter(
    name: str,
    repo_id: str,
    *,
    private: bool = False,
    library: Library | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """
    Upload library adapter *name* to the hub repository *repo_id* (created if missing) as a PEFT repo.

    *endpoint* defaults to ``HF_ENDPOINT`` read now (huggingface_hub reads it once, at import);
    *token* to ``HF_TOKEN`` or the saved ``hf auth login`` token.

    Raises:
        AdapterNotFoundError: No such adapter in the library.
        PushError: A malformed repo id, downloads/uploads switched off, or the hub refused.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not _REPO_ID.match(repo_id):
        raise PushError(f"{repo_id!r} is not a hub repo id. Expected 'user/name' or 'org/name'.")
    library = library or Library()
    library.get(name)  # AdapterNotFoundError before any network
    if _offline():
        raise PushError("pushing needs the hub, and HF_HUB_OFFLINE is on. Fix: unset HF_HUB_OFFLINE.")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    with tempfile.TemporaryDirectory(prefix="adaptrix-push-") as tmp:
        files = _stage(library, name, repo_id, Path(tmp))
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=Path(tmp) / "repo", repo_type="model",
                commit_message=commit_message or f"Upload adapter {name} with Adaptrix",
            )
        except HfHubHTTPError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PushError(
                f"hub {api.endpoint} refused the push of {name!r} to {repo_id!r}: {first}. "
                "Fix: check the repo id and that your token (HF_TOKEN or `hf auth login`) may write there."
            ) from None
        except (OSError, *_transport_errors()) as e:  # connection refused, DNS, TLS, timeouts
            raise PushError(f"could not reach the hub at {api.endpoint}: {type(e).__name__}: {e}.") from None
    return PushResult(repo_id=repo_id, url=str(url), commit=getattr(commit, "oid", None), files=files, private=private)
