"""``zoo list`` and ``zoo --help`` start without torch (issue 24), and what they show without
it agrees with the heavy modules: the source-read listing equals the registry, the parser's
choices equal their owners'. Also: whole, distinct one-line summaries, and ``zoo info`` as
plain text (whole paragraphs, no Sphinx markup, no float32 noise)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.catalog import ModelEntry, scan_models, summary_line
from zoo.cli import choices, main
from zoo.cli.doctext import plain, short_numbers, story

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pyro", "numpy")


@pytest.mark.parametrize("argv", [["list"], ["list", "--papers"], ["--help"]])
def test_light_commands_import_no_torch(argv):
    code = (
        "import sys; from zoo.cli.main import main; "
        f"assert main({argv!r}) == 0; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_source_read_listing_equals_the_registry():
    registry = [
        ModelEntry(name, zoo.get(name).paper, summary_line(zoo.get(name).summary, None))
        for name in zoo.list_models()
    ]
    assert scan_models() == registry


def test_the_parser_choices_equal_their_owners():
    import guides
    from guides.local import LOCAL_KINDS
    from inference.config import TrainConfig
    from inference.elbos import ELBO_NAMES
    from inference.lightning import ACCELERATORS
    from zoo.cli import runs

    assert choices.GUIDE_KINDS == tuple(guides.KINDS)
    assert choices.LOCAL_KINDS == LOCAL_KINDS
    assert choices.ELBO_NAMES == ELBO_NAMES
    assert choices.ACCELERATORS == ACCELERATORS
    assert choices.DEFAULT_STEPS == TrainConfig.DEFAULT_STEPS
    # engines, trainers and NUTS draws are owned by zoo.cli.choices: zoo.cli.runs imports them
    assert runs.ENGINES is choices.ENGINES and runs.TRAINERS is choices.TRAINERS


def test_every_model_has_a_whole_distinct_summary(capsys):
    """Not cut mid-sentence ("...; see", "Roberts,") and no two models alike."""
    summaries = {name: zoo.get(name).summary.strip() for name in zoo.list_models()}
    for name, summary in summaries.items():
        assert summary, f"{name} has no summary"
        assert not re.search(r"([,;:(-]|\b(see|and|of|the|a|an|with|by))$", summary), summary
        assert "\n" not in summary and len(summary) <= 100, summary
    assert len(set(summaries.values())) == len(summaries)
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(summaries)
    for line, (name, summary) in zip(lines, sorted(summaries.items()), strict=True):
        assert line.startswith(name) and line.endswith(summary)


def test_plain_strips_sphinx_markup():
    text = (
        "see :class:`ARDVAE` and :func:`~inference.diagnostics.latent_mi`, ``hidden=()``, "
        ":math:`x`, `z` and :ref:`the guide <guides>`; story::"
    )
    assert plain(text) == ("see ARDVAE and latent_mi, hidden=(), x, z and the guide; story:")


def test_story_keeps_whole_paragraphs_and_literal_blocks():
    doc = "First paragraph,\nstill first.\n\nStory::\n\n    z ~ N(0, 1)\n\n    x ~ N(z, 1)\n\nLast."
    assert story(doc, max_lines=3) == ("First paragraph,\nstill first.", True)
    text, cut = story(doc, max_lines=9)
    assert text.endswith("    x ~ N(z, 1)") and "Story:" in text and cut
    assert story(doc, max_lines=100) == (plain(doc.replace("\n\n\n", "\n\n")), False)


def test_short_numbers_drops_float32_noise_only():
    assert short_numbers("HalfNormal(scale=0.10000000149011612)") == "HalfNormal(scale=0.1)"
    assert short_numbers("[0.30000001192092896, 5.0, 1e-05]") == "[0.3, 5.0, 1e-05]"
    assert short_numbers("Normal(loc=0.0, scale=5.0).to_event(1)") == (
        "Normal(loc=0.0, scale=5.0).to_event(1)"
    )


@pytest.mark.parametrize("name", ["ard_vae", "latent_label_shift", "collapse_hvae"])
def test_info_prints_plain_whole_paragraphs(name, capsys):
    assert main(["info", name]) == 0
    out = capsys.readouterr().out
    story_text = out.split("config defaults:")[0]
    assert not re.search(r":[a-z]+:`|``", story_text), story_text
    assert not re.search(r"\d\.\d{9,}", out), out  # no float32 noise anywhere
    lines = [line for line in story_text.splitlines()[2:] if line.strip()]
    last = lines[-1].strip()
    assert last.startswith("(the whole story: python -m pydoc") or last.endswith((".", ")"))
    if name == "ard_vae":
        assert "see ARDVAE" not in story_text  # the class's own story, not the module pointer
        assert "Generative story" in story_text
    if name == "latent_label_shift":
        assert "pi ~ Dirichlet(concentration=[0.1, 0.1" in out
    if name == "collapse_hvae":
        assert "hierarchical VAE" in story_text and "collapse_cvae (conditional" not in out
