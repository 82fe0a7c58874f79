"""
Real adapters from public repositories (tests/data/corpus): read what exists in the wild, refuse the rest cleanly.

Configs are checked with ``read_lora_config`` and adapter detection from
``target_modules`` (no weights); the real weight directories go through the
whole conversion onto tiny models.
"""

from __future__ import annotations

import csv
import json

from pathlib import Path

import pytest

from adaptrix_core.conversion import convert
from adaptrix_core.detection import detect_adapter_all
from adaptrix_core.exceptions import AdapterFormatError, AdapterMismatchError, AdaptrixError, UnsupportedFeatureError
from adaptrix_core.library import Library
from adaptrix_core.peft_format import read_adapter, read_lora_config, strip_prefixes
from adaptrix_core.plugins import make_plugin_manager
from adaptrix_core.testing import tiny_gpt2, tiny_llama


CORPUS = Path(__file__).parent / "data" / "corpus"
CONFIGS = CORPUS / "configs"
WEIGHTS = CORPUS / "weights"


@pytest.fixture(scope="module")
def pm():
    """One plugin manager with the installed first-party plugins, shared by the module."""
    return make_plugin_manager()


def _config(prefix: str) -> Path:
    matches = sorted(CONFIGS.glob(f"{prefix}*.json"))
    assert len(matches) == 1, f"{prefix!r} matches {len(matches)} corpus configs"
    return matches[0]


def _claims(path: Path, pm) -> list:
    return detect_adapter_all(json.loads(path.read_text()), [], pm=pm)


FAMILIES = [  # (config file prefix, architecture its target_modules / base model belong to)
    ("Ahsan-Asim__FineTune_GPT2", "gpt2"),
    ("BlackSpy369__story-generator", "gpt2"),
    ("Muhammad-Ahmad092__Math-Riddle", "gpt2"),
    ("NikhithaN-lab__lora-finetuning-gpt2", "gpt2"),
    ("jaisharmz__abliteration-exp", "gpt2"),
    ("deepbiolab__gpt2-classification-peft", "gpt2"),
    ("gurvineet__peft-implementation__peft_model__adapter", "gpt2"),
    ("gurvineet__peft-implementation__peft_model__best", "gpt2"),
    ("gurvineet__peft-implementation__peft_model__checkpoint-0", "gpt2"),
    ("Azreal18__Phi2-finetuning", "phi2"),
    ("HashirDS__smart-tutor-phi2", "phi2"),
    ("Shilpaj1994__SFT-with-QLoRA", "phi2"),
    ("GowthamNats__MicrosoftPhi1_5", "phi2"),  # remote-code Wqkv / out_proj names
    ("CogniX-LTD__Cogni-OpenModel", "llama"),
    ("KZ-Shi__LLaMA-E", "llama"),
    ("darwinj07__KoAlpaca-lora", "llama"),
    ("halannhile__text_to_sql_with_lora", "llama"),
    ("lucamiletto__MediQAlpaca", "llama"),
    ("neu-zqh__ChatRobot__LLaMA-Factory__src__saves__ChineseLLaMA2", "llama"),
    ("vedant-spatil__TULIP", "llama"),
    ("lucasaugustodev__heretic-project", "llama"),  # Mistral
    ("Gear-dev-sudo__Gen-AI-project", "llama"),  # Qwen2.5
    ("jain18ayush__CoT-Faithfulness", "llama"),  # Qwen2.5
    ("huggingface__peft__method_comparison__MetaMathQA__experiments__lora__llama-3.2-3B-rank14", "llama"),
    ("Emile-Jn__linguistic-steganalysis", "llama"),  # q_proj, v_proj and a stray query_key_value
]


@pytest.mark.parametrize(("prefix", "architecture"), FAMILIES)
def test_detects_the_family_of_gpt2_phi_and_llama_configs(pm, prefix, architecture):
    """
    The best claim on a real GPT-2 / Phi / LLaMA-family config is that family, with confidence >= 0.7.
    """
    claims = _claims(_config(prefix), pm)

    assert (architecture, True) == (claims[0].architecture, claims[0].confidence >= 0.7), claims


REFUSED = [  # (config file prefix, error, what the message must name)
    ("AlanLau9809__Intern_GenAI_NER", AdapterFormatError, "MLX"),
    ("Arjun-254__Medical_Question", AdapterFormatError, "MLX"),
    ("tech4iddev__COLAB_GEMMA_4__adapters", AdapterFormatError, "MLX"),
    ("tech4iddev__COLAB_GEMMA_4__gemma4_final_structural", AdapterFormatError, "MLX"),  # PEFT-MLX hybrid without r
    ("vishal-adithya__FineTune-TextHumanizer", AdapterFormatError, "MLX"),
    ("huggingface__peft__examples__conditional_generation__bigscience__mt0-large_IA3", AdapterFormatError, "'IA3'"),
    ("huggingface__peft__method_comparison__MetaMathQA__experiments__lokr", AdapterFormatError, "'LOKR'"),
    ("huggingface__peft__method_comparison__MetaMathQA__experiments__vera", AdapterFormatError, "'VERA'"),
    ("huggingface__peft__method_comparison__MetaMathQA__experiments__prompt_tuning", AdapterFormatError,
     "'PROMPT_TUNING'"),
    ("huggingface__peft__diag_adapter", AdapterFormatError, "'DIAG'"),
    ("huggingface__peft__method_comparison__MetaMathQA__experiments__lora__llama-3.2-3B-rank32-dora",
     UnsupportedFeatureError, "use_dora"),
    ("huggingface__peft__method_comparison__image-gen__experiments__dora", UnsupportedFeatureError, "use_dora"),
    ("StarRing2022__ChatGPTX-Uni", UnsupportedFeatureError, "enable_lora"),
    ("Hareshjethani__BERT-GPT2", UnsupportedFeatureError, "modules_to_save"),
    ("huggingface__peft__examples__monteclora", UnsupportedFeatureError, "modules_to_save"),
    ("deepbiolab__gpt2-classification-peft", UnsupportedFeatureError, "modules_to_save"),
    ("issue__vllm-project__vllm__9280", UnsupportedFeatureError, "modules_to_save"),
]


@pytest.mark.parametrize(("prefix", "error", "named"), REFUSED)
def test_refuses_what_adaptrix_cannot_serve(prefix, error, named):
    """
    IA3, LoKr, VeRA, prompt tuning, DoRA, MLX configs, pre-0.3 PEFT and modules_to_save are refused by name.
    """
    path = _config(prefix)
    with pytest.raises(AdaptrixError) as info:
        read_lora_config(path)

    assert (error, True, True) == (type(info.value), named in str(info.value), path.name in str(info.value))


OTHER_FAMILIES = [  # encoders, encoder-decoders, diffusion and LLM families without a plugin here
    "3L0L0__FLAN-T5", "EPlus-LLM__Model", "zy-fun__peft-lora-flan", "Elyorcode__SPEECH-TO-TEXT",
    "Hareshjethani__BERT-GPT2", "huggingface__peft__examples__monteclora", "Pratik373__ai-image-generation",
    "huggingface__peft__method_comparison__image-gen", "HeavyMetalAlchemist__phi3", "MountainAlpha__falcon-7b",
    "dreamqin68__LLaMA-Factory__saves__BLOOM-560M__lora__train_2024-11-05-11", "EDLlyc__kangya-glm4",
    "eshan1347__GPT-NEO-LORA", "StarRing2022__ChatGPTX-Uni",
]


@pytest.mark.parametrize("prefix", OTHER_FAMILIES)
def test_other_families_are_never_claimed_confidently(pm, prefix):
    """
    No plugin claims an encoder, T5, Whisper, diffusion, Phi-3, BLOOM, GLM or GPT-Neo config above 0.5.
    """
    claims = _claims(_config(prefix), pm)

    assert [] == [c for c in claims if c.confidence > 0.5]


def test_every_corpus_config_keeps_its_source_line():
    """
    Each copied config has its row (repository, path, commit) in configs/SOURCES.tsv.
    """
    with (CONFIGS / "SOURCES.tsv").open(encoding="utf-8") as f:
        rows = {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}
    files = sorted(p.name for p in CONFIGS.glob("*.json"))

    assert (files, True) == (sorted(set(files) & set(rows)), all(rows[f]["repo"] and rows[f]["commit12"] for f in files))


def test_every_weights_directory_keeps_its_source_and_license():
    """
    Each copied weights directory has SOURCE.txt (with its repo, commit and license) and the repo's license.
    """
    dirs = sorted(p for p in WEIGHTS.iterdir() if p.is_dir())
    ok = [
        (d / "LICENSE.from_repo").is_file()
        and {"source_repo", "commit", "license"} <= {line.split("\t")[0] for line in (d / "SOURCE.txt").read_text().splitlines()}
        for d in dirs
    ]

    assert [True] * len(dirs) == ok


# real weights ------------------------------------------------------------------------------------------------------


def _weights_dir(prefix: str) -> Path:
    (match,) = [p for p in WEIGHTS.iterdir() if p.name.startswith(prefix)]
    return match


def _refused_conversion(path: Path, model, pm, tmp_path) -> AdaptrixError:
    library = Library(tmp_path / "library", shipped_dir=tmp_path / "none")
    with pytest.raises(AdaptrixError) as info:
        convert(str(path), "candidate", model=model, library=library, pm=pm)
    assert [] == library.list()
    assert not library.root.exists() or [] == list(library.root.iterdir())
    return info.value


def test_real_gpt2_classification_adapter_is_detected_then_refused(pm, tmp_path):
    """
    The real GPT-2 SEQ_CLS adapter's tensor keys say gpt2; its trained score head (modules_to_save) is refused.
    """
    from safetensors import safe_open

    path = _weights_dir("deepbiolab")
    with safe_open(path / "adapter_model.safetensors", "pt") as f:
        modules = sorted({strip_prefixes(k).split(".lora_")[0] for k in f.keys() if ".lora_" in k})
    claims = detect_adapter_all(json.loads((path / "adapter_config.json").read_text()), modules, pm=pm)
    error = _refused_conversion(path, tiny_gpt2(), pm, tmp_path)

    assert ("gpt2", 0.9, 36) == (claims[0].architecture, claims[0].confidence, len(modules))
    assert (UnsupportedFeatureError, True) == (type(error), "'modules_to_save'" in str(error))


def test_real_pythia_bin_adapter_reads_weights_only_and_does_not_fit_llama(monkeypatch, tmp_path):
    """
    The real GPT-NeoX (Pythia) .bin adapter loads with weights_only=True; no first-party plugin claims it; it fits
    no LLaMA. The plugin set is pinned to the first-party patterns: another installed plugin may know GPT-NeoX.
    """
    from adaptrix_core.plugins import make_plugin_manager

    monkeypatch.setenv("ADAPTRIX_LOAD_PLUGINS", "gpt2,phi2,llama")
    pm = make_plugin_manager()
    path = _weights_dir("Kimiko-AI")
    parsed = read_adapter(path)
    error = _refused_conversion(path, tiny_llama(), pm, tmp_path)

    assert ("adapter_model.bin", 6, (32, 512)) == (
        parsed.weights_file.name, len(parsed.modules), tuple(parsed.modules["gpt_neox.layers.0.attention.query_key_value"].A.shape)
    )
    assert [] == detect_adapter_all(parsed.raw_config, list(parsed.modules), pm=pm)
    assert (AdapterMismatchError, True, True) == (
        type(error), "gpt_neox.layers.0.attention.query_key_value" in str(error), "adapter_model.bin" in str(error)
    )


def test_real_distilbert_encoder_adapter_is_refused_on_a_decoder(pm, tmp_path):
    """
    The real DistilBERT (encoder) LoRA reads fine but matches no module of a causal LM: a clean mismatch.
    """
    path = _weights_dir("sdtrklse")
    error = _refused_conversion(path, tiny_llama(), pm, tmp_path)

    assert (AdapterMismatchError, True) == (type(error), "distilbert.transformer.layer.0.attention.q_lin" in str(error))


@pytest.mark.parametrize(
    ("prefix", "error", "named"),
    [
        ("huggingface__peft__examples__conditional_generation", AdapterFormatError, "'peft_type' is 'IA3'"),
        ("Inishpy__lerobot-libero", AdapterFormatError, "'r' is missing"),
    ],
)
def test_real_non_lora_weights_are_refused(pm, tmp_path, prefix, error, named):
    """
    The real IA3 adapter and the custom (non-PEFT-config) LoRA are refused before any tensor is used.
    """
    refused = _refused_conversion(_weights_dir(prefix), tiny_llama(), pm, tmp_path)

    assert (error, True, True) == (type(refused), named in str(refused), "adapter_config.json" in str(refused))
