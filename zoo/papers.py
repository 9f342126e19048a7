"""The 37 source papers the zoo covers, as data, and each one's status in the zoo.

Kept in the repository so a fresh clone knows what the zoo covers (``zoo list --papers``
prints it; ``docs/papers.md`` is generated from it). Titles and official code links are
those of the project's paper list; authors, venue, year and arXiv id are those its paper
specs give, and a field they do not give is left empty rather than guessed. A paper's status
is read from the registry: the models whose ``paper`` is its number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PAPERS", "Paper", "paper_models", "papers_markdown", "status"]

#: status of a paper no registered model implements yet
NOT_YET = "not yet in the zoo"


@dataclass(frozen=True)
class Paper:
    """One source paper: empty strings where the sources give nothing."""

    number: int
    title: str
    authors: str = ""
    venue: str = ""
    year: str = ""
    arxiv: str = ""
    code: str = ""

    @property
    def link(self) -> str:
        """The paper's arXiv page, where an arXiv id is known."""
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else ""

    @property
    def where(self) -> str:
        """Venue and year as one phrase, e.g. ``ICLR 2024``."""
        return " ".join(part for part in (self.venue, self.year) if part)


def _gh(repo: str) -> str:
    return f"https://github.com/{repo}"


PAPERS: tuple[Paper, ...] = (
    Paper(
        1,
        "A Mutual Information Perspective on Multiple Latent Variable Generative Models for "
        "Positive View Generation",
        "Serez et al.",
        "TMLR",
        "2025",
        code=_gh("SerezD/mi_ml_gen"),
    ),
    Paper(
        2,
        "Multi-modal Gaussian Process Variational Autoencoders for Neural and Behavioral Data",
        "Gondur et al.",
        "ICLR",
        "2024",
        code=_gh("RabiaGondur/MM-GPVAE"),
    ),
    Paper(
        3,
        "A Novel Predictive-Coding-Inspired Variational RNN Model for Online Prediction and "
        "Recognition",
        "Ahmadi, Tani",
        year="2018/2019",
    ),
    Paper(
        4,
        "ARD-VAE: A Statistical Formulation to Find the Relevant Latent Dimensions of "
        "Variational Autoencoders",
        "Saha, Joshi, Whitaker",
        year="2025",
        code=_gh("Surojit-Utah/ARD-VAE"),
    ),
    Paper(
        5,
        "Differentiable Neural Input Search for Recommender Systems",
        "Cheng, Shen, Huang",
        year="2020",
    ),
    Paper(
        6,
        "Emergence of Hidden Capabilities: Exploring Learning Dynamics in Concept Space",
        "Park, Okawa, Lee, Lubana, Tanaka",
        "NeurIPS",
        "2024",
        code=_gh("cfpark00/concept-learning"),
    ),
    Paper(
        7,
        "A Hierarchical Bayesian Model for Deep Few-Shot Meta Learning",
        "Kim, Hospedales",
        "ICLR",
        "2024",
        arxiv="2306.09702",
        code=_gh("minyoungkim21/niwmeta"),
    ),
    Paper(
        8,
        "On the Provable Advantage of Unsupervised Pretraining",
        "Ge, Tang, Fan, Jin",
        "ICLR",
        "2024",
    ),
    Paper(
        9,
        "Relative representations enable zero-shot latent space communication",
        "Moschella et al.",
        "ICLR",
        "2023",
        code=_gh("lucmos/relreps"),
    ),
    Paper(
        10,
        "Seek in the Dark: Reasoning via Test-Time Instance-Level Policy Gradient in Latent Space",
        "Li et al.",
        year="2025",
        code=_gh("bigai-nlco/LatentSeek"),
    ),
    Paper(
        11,
        "PAC Generalization via Invariant Representations",
        "Parulekar, Shanmugam, Shakkottai",
        "ICML",
        "2023",
    ),
    Paper(
        12,
        "Disentanglement via Latent Quantization",
        "Hsu et al.",
        "NeurIPS",
        "2023",
        code=_gh("kylehkhsu/latent_quantization"),
    ),
    Paper(
        13,
        "Latent Traversals in Generative Models as Potential Flows",
        "Song, Keller, Sebe, Welling",
        "ICML",
        "2023",
    ),
    Paper(
        14,
        "Discovering Hierarchical Latent Capabilities of Language Models via Causal "
        "Representation Learning",
        "Jin, Syrgkanis, Kakade, Zhang",
        year="2025",
    ),
    Paper(
        15,
        "Met^2Net: A Decoupled Two-Stage Spatio-Temporal Forecasting Model for Complex "
        "Meteorological Systems",
        "Li, Yang, Chen, Qin",
        "ICCV",
        "2025",
        code=_gh("ShremG/Met2Net"),
    ),
    Paper(
        16,
        "Self-supervised learning of Split Invariant Equivariant representations",
        "Garrido, Najman, LeCun",
        "ICML",
        "2023",
        code=_gh("facebookresearch/SIE"),
    ),
    Paper(
        17,
        "Beyond Vanilla Variational Autoencoders: Detecting Posterior Collapse in Conditional "
        "and Hierarchical Variational Autoencoders",
        "Dang, Tran, Nguyen, Ho",
        "ICLR",
        "2024",
    ),
    Paper(
        18,
        "Searching Latent Program Spaces",
        "Macfarlane, Bonnet",
        "NeurIPS",
        "2025",
        code=_gh("clement-bonnet/lpn"),
    ),
    Paper(
        19,
        "Martingale Posterior Neural Processes",
        "Lee, Yun, Nam, Fong, Lee",
        "ICLR",
        "2023",
    ),
    Paper(
        20,
        "Identifying Representations for Intervention Extrapolation",
        "Saengkyongam, Rosenfeld, Ravikumar, Pfister, Peters",
        "ICLR",
        "2024",
    ),
    Paper(
        21,
        "Unifying Self-Supervised Clustering and Energy-Based Models",
        "Sansone, Manhaeve",
        "TMLR",
        "2025",
        code=_gh("emsansone/GEDI"),
    ),
    Paper(
        22,
        "Towards Principled Representation Learning from Videos for Reinforcement Learning",
        "Misra, Saran, Xie, Lamb, Langford",
        "ICLR",
        "2024",
        code=_gh("microsoft/Intrepid"),
    ),
    Paper(
        23,
        "SESA: Supervised Explicit Semantic Analysis",
        "Bogdanova, Yazdani",
        year="2017",
    ),
    Paper(
        24,
        "Neural Snowflakes: Universal Latent Graph Inference via Trainable Latent Geometries",
        "Sáez de Ocáriz Borde, Kratsios",
        "ICLR",
        "2024",
    ),
    Paper(
        25,
        "Unsupervised Learning under Latent Label Shift",
        venue="NeurIPS",
        year="2022",
        code=_gh("acmi-lab/Latent-Label-Shift-DDFA"),
    ),
    Paper(
        26,
        "Approaching an unknown communication system by latent space exploration and causal "
        "inference",
        "Beguš, Leban, Gero",
        arxiv="2303.10931",
    ),
    Paper(
        27,
        "Latent Adversarial Training Improves Robustness to Persistent Harmful Behaviors in LLMs",
        year="2024",
        arxiv="2407.15549",
        code=_gh("aengusl/latent-adversarial-training"),
    ),
    Paper(
        28,
        "Causal Diffusion Autoencoders: Toward Counterfactual Generation via Diffusion "
        "Probabilistic Models",
        venue="ECAI",
        year="2024",
        code=_gh("Akomand/CausalDiffAE"),
    ),
    Paper(
        29,
        "Conditional Latent Coding with Learnable Synthesized Reference for Deep Image Compression",
        venue="AAAI",
        year="2025",
        code=_gh("ydchen0806/CLC"),
    ),
    Paper(
        30,
        "Stabilize the Latent Space for Image Autoregressive Modeling: A Unified Perspective",
        venue="NeurIPS",
        year="2024",
        code=_gh("DAMO-NLP-SG/DiGIT"),
    ),
    Paper(
        31,
        "T-JEPA: Augmentation-Free Self-Supervised Learning for Tabular Data",
        venue="ICLR",
        year="2025",
        code=_gh("jose-melo/t-jepa"),
    ),
    Paper(
        32,
        "Discovering Failure Modes of Text-guided Diffusion Models via Adversarial Search",
        "Liu, Kortylewski, Bai, Bai, Yuille",
        arxiv="2306.00974",
    ),
    Paper(
        33,
        "Label-Agnostic Forgetting: A Supervision-Free Unlearning in Deep Models",
        venue="ICLR",
        year="2024",
        code=_gh("ShaofeiShen768/LAF"),
    ),
    Paper(
        34,
        "Latent Zoning Network: A Unified Principle for Generative Modeling, Representation "
        "Learning, and Classification",
        venue="NeurIPS",
        year="2025",
        code=_gh("microsoft/latent-zoning-networks"),
    ),
    Paper(
        35,
        "Householder Projector for Unsupervised Latent Semantics Discovery",
        venue="ICCV",
        year="2023",
        code=_gh("KingJamesSong/HouseholderGAN"),
    ),
    Paper(
        36,
        "Generative Causal Representation Learning for Out-of-Distribution Motion Forecasting",
        venue="ICML",
        year="2023",
        code=_gh("sshirahmad/GCRL"),
    ),
    Paper(
        37,
        "Variational Inference with Latent Space Quantization for Adversarial Resilience",
        "Kyatham, Mishra, Yadav, Mishra, Prathosh",
        year="2019",
        arxiv="1903.09940",
    ),
)


def paper_models(entries: Iterable) -> dict[int, list[str]]:
    """Paper number -> the names of the models (``ModelEntry``-like: ``name``, ``paper``)
    that implement it."""
    found: dict[int, list[str]] = {}
    for entry in entries:
        if entry.paper is not None:
            found.setdefault(entry.paper, []).append(entry.name)
    return {number: sorted(names) for number, names in found.items()}


def status(paper: Paper, models: dict[int, list[str]]) -> str:
    """``in the zoo: NAME, ...`` or ``not yet in the zoo``."""
    names = models.get(paper.number)
    return f"in the zoo: {', '.join(names)}" if names else NOT_YET


def papers_markdown(entries: Iterable) -> str:
    """The list as a Markdown table (``docs/papers.md``)."""
    models = paper_models(entries)
    lines = [
        "# The source papers",
        "",
        "<!-- generated from zoo/papers.py by `zoo list --papers --markdown`; do not edit -->",
        "",
        f"The zoo's {len(PAPERS)} source papers, numbered as everywhere in the project. A "
        "field is empty where the project's sources do not give it.",
        "",
        "| # | title | authors | venue | paper | official code | in the zoo |",
        "|---|---|---|---|---|---|---|",
    ]
    for paper in PAPERS:
        names = models.get(paper.number)
        cells = [
            str(paper.number),
            paper.title.replace("|", "\\|"),
            paper.authors,
            paper.where,
            f"[arXiv {paper.arxiv}]({paper.link})" if paper.link else "",
            f"[{paper.code.removeprefix('https://github.com/')}]({paper.code})"
            if paper.code
            else "",
            ", ".join(f"`{name}`" for name in names) if names else NOT_YET,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
