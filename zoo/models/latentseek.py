"""LatentSeek (paper 10) as the spec's probabilistic analogue: test-time policy gradient on
the hidden states of a frozen GRU language model that adds two-digit numbers.

Li et al. (2025), "Seek in the Dark: Reasoning via Test-Time Instance-Level Policy Gradient
in Latent Space" (arXiv:2505.13308); code github.com/bigai-nlco/LatentSeek.

**An adaptation.** The paper optimises the pre-LM-head hidden states of an LLM's
chain-of-thought answer under a reward. Here the LLM is a tiny GRU language model (hidden
size 64) on synthetic strings ``"a+b=c$"`` (a, b < 100, ``$`` the end of the string, padded
to 11 tokens) and the chain of thought is the answer's digits. What is kept: a frozen
network; a latent per instance, the hidden states z_1..z_k that the head reads for the first
k answer tokens (the paper's first rho T tokens); the paper's loss (REINFORCE on the single
greedy decode, -R sum_t log softmax(head(z_t))[x_t]) with Adam on z; the greedy frozen
continuation after the k tokens; the stop once the reward is reached; the two rewards (an
exact checker, the paper's perfect sparse reward model PSRM, and a self-reward). The LLM's
verifier prompts become a correctness head on the frozen network's own last hidden state,
trained on the model's own sampled answers to training prompts (:meth:`fit_verifier`).

Training (``model``): a Categorical sequence model with one global latent, an offset b of
the head's logits (a declared, swappable prior), the network's weights point estimates::

    b ~ N(0, I_V)                                               (site bias)
    h_0 = 0,  h_t = GRU(h_{t-1}, embed(x_{t-1})),  x_0 = BOS
    x_t ~ Categorical(softmax(W h_t + c + b)),  t = 1..T_n        (site tokens, masked
                                                                 after the end token)

Test time (``seek_model`` / ``seek_guide``, the spec's Pyro mapping), per prompt n with the
greedy answer's hidden states z0 (k x H)::

    z ~ N(z0, s^2 I)                                            proximity prior
    x_{1..k} ~ Categorical(softmax(W z_t + c + b))              the first answer tokens
    x_{k+1..} = greedy continuation of the frozen GRU fed x_{1..k}
    factor R(x) / temp                                          reward in [-1, 0]

    guide: z ~ N(mu, guide_sd^2 I) (1e-3), x_t the greedy token of head(z_t) (the paper) or a draw

The ELBO's score-function surrogate per instance (:meth:`seek_surrogate`: log p(z) -
log q(z) + R/temp + (R/temp) sum_t log q(x_t)) is climbed in mu by
:func:`inference.latent_search.search` (Adam per instance, the frozen network, each prompt
stopping once its reward passes ``stop_reward``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from inference.data import DataError, Field
from inference.latent_search import search
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    check_positive_int,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register

__all__ = [
    "LatentSeek",
    "VOCAB",
    "answers_of",
    "arithmetic_pairs",
    "encode_strings",
    "decode_string",
]

#: tokens: digits, '+', '=', '$' (end), '_' (padding); BOS (index 14) only feeds the GRU
VOCAB = "0123456789+=$_"
PLUS, EQ, EOS, PAD, BOS = 10, 11, 12, 13, 14
#: tokens per row ("99+99=198$" is 10) and answer tokens (3 digits and the end)
LENGTH, ANSWER = 11, 4
REWARDS = ("checker", "self")


def arithmetic_pairs(seed: int) -> np.ndarray:
    """All 10 000 pairs (a, b), a, b < 100, in a seeded random order, (10000, 2)."""
    order = np.random.default_rng(seed).permutation(10_000)
    return np.stack([order // 100, order % 100], 1)


def encode_strings(pairs, answers=None) -> torch.Tensor:
    """Rows of tokens ``"a+b=c$"`` padded to :data:`LENGTH` (c = a + b unless given)."""
    pairs = np.asarray(pairs)
    rows = []
    for i, (a, b) in enumerate(pairs):
        c = int(a) + int(b) if answers is None else int(answers[i])
        text = f"{int(a)}+{int(b)}={c}$"
        rows.append([VOCAB.index(ch) for ch in text] + [PAD] * (LENGTH - len(text)))
    return torch.tensor(rows, dtype=torch.long)


def decode_string(row) -> str:
    return "".join(VOCAB[int(t)] for t in row if int(t) != PAD)


def answers_of(tokens: torch.Tensor) -> torch.Tensor:
    """The answer tokens after '=' of each row, (N, ANSWER) padded with PAD."""
    eq = (tokens == EQ).long().argmax(-1)
    pos = eq[:, None] + 1 + torch.arange(ANSWER)
    ok = pos < tokens.shape[-1]
    out = tokens.gather(-1, pos.clamp(max=tokens.shape[-1] - 1))
    return torch.where(ok, out, torch.full_like(out, PAD))


def _until_end(answer: torch.Tensor) -> torch.Tensor:
    """Mask of the tokens up to and including each row's first end token (N, K)."""
    ended = (answer == EOS).long().cumsum(-1)
    return (ended - (answer == EOS).long()) == 0


class GRULM(nn.Module):
    """x_{t-1} -> h_t -> logits of x_t."""

    def __init__(self, hidden: int, embed: int):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB) + 1, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, len(VOCAB))

    def states(self, inputs: torch.Tensor, h=None):
        out, h = self.gru(self.embed(inputs), h)
        return out, h


@register
class LatentSeek(ZooModel):
    """LatentSeek as a Pyro analogue: a GRU language model of "a+b=c" strings and test-time
    REINFORCE on its answer's hidden states under a reward factor and a proximity prior. An
    adaptation of the LLM method (see the module doc for what it keeps)."""

    name = "latentseek"
    summary = "LatentSeek: test-time policy gradient on a frozen GRU LM's answer hidden states"
    paper = 10
    static_structure = True
    #: the run report replays the GRU over every row for each posterior draw: 200 strings
    #: with few draws keep `zoo train` quick (the bias is one global vector)
    idata_rows = 200

    tiny = {"num_strings": 300, "hidden": 16, "embed": 8, "steps": 20, "seek_steps": 2}

    @dataclass
    class Config(TrainConfig):
        #: strings "a+b=c$" in the default data (of the 10 000 pairs; ``holdout`` held out)
        num_strings: int = 9000
        holdout: float = 0.1
        #: GRU units and token embedding size
        hidden: int = 64
        embed: int = 32
        #: k: answer tokens whose hidden states are the test-time latent
        seek_tokens: int = 3
        #: test-time iterations (Adam steps on z) and their learning rate
        seek_steps: int = 10
        seek_lr: float = 0.03
        #: s, the proximity prior's sd around the greedy answer's states
        proximity: float = 1.0
        #: the reward's temperature in the factor R / temp
        reward_temp: float = 1.0
        #: sd of the test-time guide q(z) = N(mu, guide_sd^2) (the spec's 1e-3)
        guide_sd: float = 1e-3
        #: a prompt stops once its reward exceeds this (the paper's -0.2)
        stop_reward: float = -0.2
        #: "greedy" tokens in the guide (the paper) or "sample" them
        seek_tokens_from: str = "greedy"
        #: sd of the random-perturbation control's draws around z0
        perturb_sd: float = 0.3
        batch_size: int = 128
        lr: float = 3e-3
        steps: int | None = 8000
        clip_norm: float | None = 5.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.lm = GRULM(c.hidden, c.embed)
        #: the self-reward: p(correct | the frozen network's state after the whole string)
        self.verifier = nn.Sequential(nn.Linear(c.hidden, 64), nn.ReLU(), nn.Linear(64, 1))
        self.register_buffer("bias_value", torch.zeros(len(VOCAB)))

    # ----- configuration and data ----------------------------------------------------------

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "num_strings", "hidden", "embed", "seek_tokens")
        if not 2 <= c.num_strings <= 10_000:
            raise ConfigError(f"num_strings must be in 2..10000, got {c.num_strings}")
        if c.seek_tokens > ANSWER:
            raise ConfigError(f"seek_tokens must be in 1..{ANSWER}, got {c.seek_tokens}")
        require_non_negative_ints(c, "seek_steps")
        require_positive_numbers(c, "seek_lr", "proximity", "reward_temp", "perturb_sd", "guide_sd")
        if not -1.0 <= c.stop_reward <= 0.0:
            raise ConfigError(f"stop_reward must be in [-1, 0], got {c.stop_reward}")
        if c.seek_tokens_from not in ("greedy", "sample"):
            raise ConfigError(
                f"seek_tokens_from must be 'greedy' or 'sample', got {c.seek_tokens_from!r}"
            )

    def data_spec(self) -> dict[str, Field]:
        return {
            "tokens": Field(
                shape=(LENGTH,),
                dtype="int",
                support=constraints.integer_interval(0, PAD),
                doc=f"strings 'a+b=c$' as token ids of {VOCAB!r}, padded with '_'",
            )
        }

    def validate(self, data: Mapping) -> dict[str, torch.Tensor]:
        out = super().validate(data)
        tokens = out["tokens"]
        counts = [(tokens == t).sum(-1) for t in (PLUS, EQ, EOS)]
        if any(bool((count != 1).any()) for count in counts):
            bad = int(torch.nonzero(sum((c != 1).long() for c in counts))[0, 0])
            raise DataError(
                f"'tokens' row {bad} is not one string 'a+b=c$' (one '+', one '=', one end "
                "token '$')"
            )
        end = (tokens == EOS).long().argmax(-1)
        after = torch.arange(LENGTH) > end[:, None]
        if bool(((tokens == PAD) != after).any()):
            bad = int(torch.nonzero(((tokens == PAD) != after).any(-1))[0, 0])
            raise DataError(f"'tokens' row {bad} must be padded with '_' after '$' and only there")
        return out

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        pairs = arithmetic_pairs(seed)[: self.config.num_strings]
        return self.validate({"tokens": encode_strings(pairs)})

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"bias": dist.Normal(0.0, 1.0).expand([len(VOCAB)]).to_event(1)}

    # ----- training model -----------------------------------------------------------------

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every token (N, L, V), without the bias."""
        inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], -1)
        states, _ = self.lm.states(inputs)
        return self.lm.head(states)

    def model(self, batch) -> None:
        tokens = batch["tokens"]
        bias = pyro.sample("bias", self.prior("bias"))
        logits = self.logits(tokens) + bias.unsqueeze(-2)
        end = (tokens == EOS).long().argmax(-1, keepdim=True)
        mask = torch.arange(tokens.shape[-1], device=tokens.device) <= end
        with self.data_plate(batch):
            pyro.sample(
                "tokens", dist.Categorical(logits=logits).mask(mask).to_event(1), obs=tokens
            )

    def dims(self) -> dict[str, list[str]]:
        return {"bias": ["token"], "tokens": ["string", "position"]}

    def use_guide(self, guide, data) -> None:
        """Decode with the guide's posterior median of the bias (zeros without a guide)."""
        from inference.data import full_batch

        bias = torch.zeros(len(VOCAB))
        if guide is not None:
            with torch.no_grad():
                first = {k: torch.as_tensor(v)[:1] for k, v in data.items()}
                median = guide.median(full_batch(first))
            if "bias" in median:
                bias = median["bias"].detach().reshape(-1)
        self.bias_value.copy_(bias.to(self.bias_value))

    # ----- decoding -------------------------------------------------------------------------

    def prompt_states(self, tokens: torch.Tensor):
        """The GRU's state after reading each prompt up to '=' (1, N, H): the state whose
        head gives the first answer token."""
        tokens = torch.as_tensor(tokens, device=self.device)
        eq = (tokens == EQ).long().argmax(-1)
        inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens], -1)
        inputs = torch.where(inputs == PAD, torch.full_like(inputs, EOS), inputs)
        states, _ = self.lm.states(inputs)
        return states[torch.arange(len(tokens)), eq + 1].unsqueeze(0).contiguous()

    def _step(self, token: torch.Tensor, h: torch.Tensor):
        out, h = self.lm.states(token.clamp(max=EOS).unsqueeze(-1), h)
        return out[:, 0], h

    def decode(
        self, h: torch.Tensor, z: torch.Tensor | None = None, *, tokens=None, sample=False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(answer, states)``: the answer (N, ANSWER) from the prompt state ``h``, its
        first ``z.shape[1]`` tokens read from the latents ``z`` (or given as ``tokens``),
        the rest the frozen network's greedy continuation fed those tokens; ``states``
        (N, ANSWER, H) are the states the head read (the greedy decode's are z0)."""
        k = 0 if z is None else z.shape[1]
        cur = h[0]
        answer, states = [], []
        done = torch.zeros(h.shape[1], dtype=torch.bool, device=h.device)
        for t in range(ANSWER):
            read = z[:, t] if t < k else cur
            states.append(read)
            logits = self.lm.head(read) + self.bias_value
            if tokens is not None and t < tokens.shape[1]:
                nxt = tokens[:, t]
            elif sample and t < k:
                nxt = dist.Categorical(logits=logits).sample()
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            answer.append(nxt)
            done = done | (nxt == EOS)
            if t + 1 < ANSWER:
                cur, h = self._step(nxt, h)
        return torch.stack(answer, 1), torch.stack(states, 1)

    @torch.no_grad()
    def greedy(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(answer, z0, h)``: the greedy answers to the prompts of ``tokens``, the states
        the head read for them (N, ANSWER, H) and the prompt states."""
        h = self.prompt_states(tokens)
        answer, states = self.decode(h)
        return answer, states, h

    # ----- rewards --------------------------------------------------------------------------

    @staticmethod
    def checker(tokens: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """PSRM: 0 where the answer is the true sum, else -1."""
        truth = answers_of(tokens)

        def reward(answer):
            return (answer == truth.to(answer.device)).all(-1).float() - 1.0

        return reward

    @torch.no_grad()
    def final_states(self, strings: torch.Tensor) -> torch.Tensor:
        """The frozen network's state after reading each whole string's end token (N, H)."""
        inputs = torch.cat([torch.full_like(strings[:, :1], BOS), strings], -1)
        inputs = torch.where(inputs == PAD, torch.full_like(inputs, EOS), inputs)
        states, _ = self.lm.states(inputs)
        return states[torch.arange(len(strings)), (strings != PAD).sum(-1)]

    def verifier_logits(self, strings: torch.Tensor) -> torch.Tensor:
        """The self-reward head's logit of 'correct' for whole strings (N, L)."""
        return self.verifier(self.final_states(strings)).squeeze(-1)

    def self_reward(self, tokens: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The self-reward p(correct) - 1 in [-1, 0] of the verifier head."""

        def reward(answer):
            with torch.no_grad():
                return torch.sigmoid(self.verifier_logits(with_answer(tokens, answer))) - 1.0

        return reward

    def fit_verifier(self, data, *, steps: int = 3000, lr: float = 3e-3, seed: int = 0) -> None:
        """Train the self-reward head on the frozen network's own answers to the training
        prompts (the greedy one and two sampled ones per prompt, plus the true strings),
        labelled by the checker."""
        tokens = torch.as_tensor(data["tokens"], device=self.device)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            h = self.prompt_states(tokens)
            cands = [tokens, with_answer(tokens, self.decode(h)[0])]
            for _ in range(2):
                cands.append(with_answer(tokens, self._sample_answer(h)))
        features = self.final_states(torch.cat(cands))
        labels = torch.cat([(answers_of(c) == answers_of(tokens)).all(-1) for c in cands]).float()
        optimizer = torch.optim.Adam(self.verifier.parameters(), lr=lr)
        for _ in range(steps):
            rows = torch.randint(len(features), (256,), generator=generator)
            logits = self.verifier(features[rows]).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def _sample_answer(self, h):
        cur, answer = h[0], []
        done = torch.zeros(h.shape[1], dtype=torch.bool, device=h.device)
        for t in range(ANSWER):
            nxt = dist.Categorical(logits=self.lm.head(cur) + self.bias_value).sample()
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            answer.append(nxt)
            done = done | (nxt == EOS)
            if t + 1 < ANSWER:
                cur, h = self._step(nxt, h)
        return torch.stack(answer, 1)

    # ----- test-time model and guide --------------------------------------------------------

    def seek_model(self, h, z0, reward) -> torch.Tensor:
        """z ~ N(z0, s^2), x_{1..k} ~ Categorical(head(z)), the greedy continuation, and the
        factor R / temp. Returns the decoded answer."""
        c = self.config
        with pyro.plate("prompts", z0.shape[0]):
            z = pyro.sample("z", dist.Normal(z0, c.proximity).to_event(2))
            logits = self.lm.head(z) + self.bias_value
            x = pyro.sample("x", dist.Categorical(logits=logits).to_event(1))
            answer, _ = self.decode(h, z, tokens=x)
            pyro.factor("R", reward(answer) / c.reward_temp)
        return answer

    def seek_guide(self, h, mu) -> None:
        """z ~ N(mu, guide_sd^2), x_t the greedy token of head(z_t) (or a draw of it)."""
        with pyro.plate("prompts", mu.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, self.config.guide_sd).to_event(2))
            logits = self.lm.head(z) + self.bias_value
            pyro.sample("x", dist.Categorical(logits=logits).to_event(1))

    def seek_surrogate(self, h, z0, reward, mu, *, last: dict | None = None) -> torch.Tensor:
        """Per prompt, the score-function surrogate of the ELBO of the test-time model and
        guide at the guide mean ``mu``: log p(z) - log q(z) + R/temp + (R/temp) sum_t
        log q(x_t) over the tokens up to the answer's end (x's model and guide terms cancel
        exactly). Its gradient in ``mu`` is the paper's REINFORCE step plus the proximity
        prior's pull. TraceGraph_ELBO's single-sample estimate differs by d log p(x | z),
        zero in expectation, which would cancel the push of R = -1 (the checker's 'wrong')
        away from the current tokens. ``last`` receives the decode's answer and reward."""
        c = self.config
        model, guide = self.seek_model, self.seek_guide
        if c.seek_tokens_from == "greedy":  # the paper's single greedy 'sample'
            greedy = {"x": (self.lm.head(mu) + self.bias_value).argmax(-1).detach()}
            model, guide = poutine.condition(model, greedy), poutine.condition(guide, greedy)
        guide_trace = poutine.trace(guide).get_trace(h, mu)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(h, z0, reward)
        z, x = guide_trace.nodes["z"], guide_trace.nodes["x"]
        answer = model_trace.nodes["_RETURN"]["value"]
        factor = model_trace.nodes["R"]
        r = factor["fn"].log_prob(factor["value"])
        log_pz = model_trace.nodes["z"]["fn"].log_prob(z["value"])
        # d log q(z) / d mu is 0 (the path and the loc cancel); detached, float rounding
        # of (z - mu) / sd^2 at sd = 1e-3 adds no noise to the gradient
        log_qz = z["fn"].log_prob(z["value"]).detach()
        mask = _until_end(answer[:, : mu.shape[1]])
        log_qx = (x["fn"].base_dist.log_prob(x["value"]) * mask).sum(-1)
        if last is not None:
            last["answer"], last["reward"] = answer.detach(), r.detach() * c.reward_temp
        return log_pz - log_qz + r + r.detach() * log_qx

    def seek(
        self,
        tokens: torch.Tensor,
        reward: str | Callable = "checker",
        *,
        steps: int | None = None,
        lr: float | None = None,
        stop: float | None = None,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """LatentSeek on the prompts of ``tokens``: ``answers`` (N, ANSWER) after the
        search, ``history`` (steps + 1, N) of each iteration's answer being correct (the
        checker's view, whatever reward guides), ``stopped_at`` per prompt, ``rewards``
        (steps + 1, N) of the guiding reward. The network stays frozen. ``steps``, ``lr``
        and ``stop`` default to the config's ``seek_steps``, ``seek_lr``, ``stop_reward``."""
        c = self.config
        steps = c.seek_steps if steps is None else steps
        lr = c.seek_lr if lr is None else lr
        stop_reward = c.stop_reward if stop is None else stop
        tokens = torch.as_tensor(tokens, device=self.device)
        reward_fn = self._reward(tokens, reward)
        check = self.checker(tokens)
        answer0, states, h = self.greedy(tokens)
        z0 = states[:, : c.seek_tokens].detach()
        last: dict = {}
        answers, rewards, correct = [], [], []

        def objective(mu):
            value = self.seek_surrogate(h, z0, reward_fn, mu, last=last)
            answers.append(last["answer"])
            rewards.append(last["reward"])
            correct.append(check(last["answer"]) == 0)
            return value

        def done(z, values):
            return last["reward"] > stop_reward

        was = self.training
        self.eval()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                result = search(objective, z0, steps=steps, lr=lr, modules=[self], done=done)
        finally:
            self.train(was)
        stop = result.stopped_at
        index = torch.where(stop >= 0, stop, torch.full_like(stop, len(answers) - 1))
        final = torch.stack(answers)[index, torch.arange(len(tokens))]
        return {
            "answers": final,
            "history": _carry(torch.stack(correct), stop, steps + 1),
            "rewards": _carry(torch.stack(rewards), stop, steps + 1),
            "stopped_at": stop,
        }

    @torch.no_grad()
    def perturb(
        self,
        tokens: torch.Tensor,
        reward: str | Callable = "checker",
        *,
        steps: int | None = None,
        sd: float | None = None,
        stop: float | None = None,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """The random-perturbation control with LatentSeek's decode budget: ``steps``
        fresh draws z = z0 + sd * eps after the greedy decode, each prompt stopping at its
        first draw whose reward passes ``stop_reward``; the same outputs as :meth:`seek`."""
        c = self.config
        steps = c.seek_steps if steps is None else steps
        sd = c.perturb_sd if sd is None else sd
        stop_reward = c.stop_reward if stop is None else stop
        tokens = torch.as_tensor(tokens, device=self.device)
        reward_fn, check = self._reward(tokens, reward), self.checker(tokens)
        answer, states, h = self.greedy(tokens)
        z0 = states[:, : c.seek_tokens]
        generator = torch.Generator().manual_seed(seed)
        r = reward_fn(answer)
        stop = torch.where(r > stop_reward, 0, -1)
        final = answer.clone()
        history, rewards = [check(answer) == 0], [r]
        for step in range(1, steps + 1):
            noise = torch.randn(z0.shape, generator=generator).to(z0)
            new, _ = self.decode(h, z0 + sd * noise)
            r_new = reward_fn(new)
            live = stop < 0
            final[live] = new[live]
            r = torch.where(live, r_new, r)
            stop = torch.where(live & (r_new > stop_reward), step, stop)
            history.append(check(final) == 0)
            rewards.append(r)
        return {
            "answers": final,
            "history": torch.stack(history),
            "rewards": torch.stack(rewards),
            "stopped_at": stop,
        }

    def _reward(self, tokens, reward):
        if callable(reward):
            return reward
        if reward == "checker":
            return self.checker(tokens)
        if reward == "self":
            return self.self_reward(tokens)
        raise ValueError(f"reward must be one of {REWARDS} or a function, got {reward!r}")

    # ----- evaluation and figures -----------------------------------------------------------

    def exact_match(self, tokens, answers) -> float:
        return float((answers == answers_of(torch.as_tensor(tokens))).all(-1).float().mean())

    def evaluate(self, guide, data) -> dict:
        """Held-out exact match of the greedy answer, of LatentSeek with the checker's
        reward (``seek_steps`` iterations) and of the random-perturbation control with the
        same decode budget; the held-out NLL per token."""
        self.use_guide(guide, data)
        tokens = torch.as_tensor(data["tokens"], device=self.device)
        answer, _, _ = self.greedy(tokens)
        out = {
            "exact_match": self.exact_match(tokens, answer),
            "seek_checker_exact_match": self.exact_match(tokens, self.seek(tokens)["answers"]),
            "perturb_checker_exact_match": self.exact_match(
                tokens, self.perturb(tokens)["answers"]
            ),
        }
        with torch.no_grad():
            logits = self.logits(tokens) + self.bias_value
            end = (tokens == EOS).long().argmax(-1, keepdim=True)
            mask = torch.arange(tokens.shape[-1]) <= end
            nll = -dist.Categorical(logits=logits).log_prob(tokens)
            out["nll_per_token"] = float((nll * mask).sum() / mask.sum())
        return out

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """``num`` strings drawn from the language model (ancestral sampling from BOS, the
        bias at the guide's median), padded after their end token."""
        check_positive_int("num", num)
        self.use_guide(guide, data)
        rows = torch.full((num, LENGTH), PAD, dtype=torch.long)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            token = torch.full((num,), BOS, dtype=torch.long)
            h = None
            done = torch.zeros(num, dtype=torch.bool)
            for t in range(LENGTH):
                out, h = self.lm.states(token.unsqueeze(-1), h)
                logits = self.lm.head(out[:, 0]) + self.bias_value
                logits[:, PAD] = -float("inf")
                token = dist.Categorical(logits=logits).sample()
                rows[:, t] = torch.where(done, torch.full_like(token, PAD), token)
                done = done | (token == EOS)
        return {"tokens": rows}

    def figures(self, guide, data, *, idata=None) -> dict:
        """Exact match per LatentSeek iteration (checker) beside the random control."""
        return {"seek_curve": lambda: seek_curve_figure(self, guide, data)}


def with_answer(tokens: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """The rows of ``tokens`` with their answers replaced by ``answer`` (N, ANSWER)."""
    eq = (tokens == EQ).long().argmax(-1)
    out = tokens.clone()
    pos = torch.arange(tokens.shape[-1])
    out[pos > eq[:, None]] = PAD
    for t in range(answer.shape[1]):
        col = eq + 1 + t
        ok = col < tokens.shape[-1]
        out[ok.nonzero()[:, 0], col[ok]] = answer[ok, t]
    return out


def _carry(values: torch.Tensor, stop: torch.Tensor, length: int) -> torch.Tensor:
    """``length`` per-iteration values with each stopped prompt's value carried from its
    stop on (the search keeps a stopped prompt's latent) and the last one repeated where
    every prompt stopped early."""
    steps = torch.arange(length)[:, None]
    index = torch.where((stop >= 0) & (steps > stop), stop, steps).clamp(max=len(values) - 1)
    return values.gather(0, index.expand(length, values.shape[1]).contiguous())


def seek_curve_figure(model: LatentSeek, guide, data, rows: int = 200):
    import matplotlib.pyplot as plt

    model.use_guide(guide, data)
    tokens = torch.as_tensor(data["tokens"])[:rows]
    seek = model.seek(tokens)["history"].float().mean(-1)
    rand = model.perturb(tokens)["history"].float().mean(-1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(seek.numpy(), marker="o", label="LatentSeek (checker)")
    ax.plot(rand.numpy(), marker="s", label="random perturbation (checker)")
    ax.set_xlabel("iteration (decodes after the greedy one)")
    ax.set_ylabel("exact match")
    ax.legend()
    fig.tight_layout()
    return fig
