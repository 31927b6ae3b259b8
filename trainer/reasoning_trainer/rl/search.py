"""Policy-guided tree search over reasoning steps, many problems at once.

Each round, the policy picks one action per unfinished tree (one batched forward); every
EXPAND and BRANCH of the round becomes one batched ``generate`` call for the new steps, one
batched PRM pass that scores them, and one batched forward that reads the new nodes' features.

Every node keeps the generator's keys and values of its own tokens (the root: the prompt's),
and the PRM's of its own step and separator. A path's cache is its nodes' pieces laid end to end,
so a new step is generated, its feature read and its PRM score computed by running only the
step's tokens: the path is never encoded twice (``pgts.cacheKv``). A published PRM reads the whole
chat each time (its template closes the turn after the last step, so a path is no prefix of its
continuation).

Every tree draws its randomness (action choices and token sampling, both by the Gumbel-max
trick) from its own generator seeded per problem, and only while it is unfinished, so a
problem's tree is the same whether it is searched alone or in a batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .. import prm
from ..data.answers import FINAL_MARK, extract_number
from ..data.problems import Problem
from ..generation import left_padded, prompt_ids
from ..schema.stages import PgtsSpec
from .policy import TreePolicy, encode
from .tree import BACKTRACK, TERMINATE, Tree, TreeState


# One (keys, values) pair per layer (generator or PRM), each [1, kv heads, tokens, head dim].
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]
# The longest solution the PRM reads; the steps past it are not scored.
PRM_MAX_TOKENS = 4096


@dataclass
class Decision:
    state: TreeState
    action: int
    logprob: float
    value: float
    reward: float


@dataclass
class Episode:
    problem: Problem
    tree: Tree
    decisions: list[Decision] = field(default_factory=list)
    answer: str | None = None
    correct: bool = False
    tokens: int = 0
    # Node index -> the generator's (keys, values) per layer for that node's own tokens.
    kv: dict[int, KeysValues] = field(default_factory=dict, repr=False)
    # Node index -> the PRM's, for the node's step and separator (the root: the PRM's prompt). A node
    # without one did not fit the PRM's context.
    prm_kv: dict[int, KeysValues] = field(default_factory=dict, repr=False)


@dataclass
class SearchModels:
    generator: object
    tokenizer: object
    reward_model: object
    prm_tokenizer: object
    policy: TreePolicy
    separator: str
    max_step_tokens: int
    max_prompt_tokens: int
    instruction: str = ""

    def prompt(self, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, question, self.instruction)[-self.max_prompt_tokens:]

    @property
    def prm_continues_paths(self) -> bool:
        return getattr(self.reward_model, "step_token", None) is None


@dataclass
class SearchStats:
    seconds: float
    nodes_per_problem: float
    tokens_per_problem: float
    parallelism: float  # leaves (branches alive) per problem at the end of the search


def search(models: SearchModels, pgts: PgtsSpec, problems: list[Problem], seeds: list[int],
           greedy_actions: bool = False, gamma: float = 1.0) -> list[Episode]:
    """Search every problem's tree to its end; rewards are recorded on each decision: minus the
    action's cost, the PRM shaping gamma x potential(after) - potential(before) (the potential of
    a finished tree is 0), and the outcome on the last one. ``gamma``: the PPO discount."""
    rngs = [torch.Generator().manual_seed(seed) for seed in seeds]
    prompts = [models.prompt(p.question) for p in problems]
    roots, prompt_kv = _extend(models.generator, None, prompts)
    episodes = [Episode(p, Tree.start(p.question, root, pgts.max_depth, pgts.max_nodes, p.answer_format))
                for p, root in zip(problems, roots)]
    if pgts.cache_kv:
        for episode, kv in zip(episodes, prompt_kv):
            episode.kv[0] = kv
        if models.prm_continues_paths:
            _, prm_prompt_kv = _continue(models.reward_model, None,
                                         [prompt_ids(models.prm_tokenizer, p.question) for p in problems])
            for episode, kv in zip(episodes, prm_prompt_kv):
                episode.prm_kv[0] = kv
    max_actions = 2 * pgts.max_nodes
    models.policy.eval()  # dropout off while acting
    while active := [i for i, e in enumerate(episodes) if not e.tree.done]:
        states = [episodes[i].tree.state() for i in active]
        device = next(models.policy.parameters()).device
        with torch.no_grad():
            logits, values = models.policy(encode([(episodes[i].tree, s) for i, s in zip(active, states)], device))
        requests, before = [], [episodes[i].tree.potential() for i in active]
        for row, i in enumerate(active):
            episode, state = episodes[i], states[row]
            action = _choose(logits[row].float().cpu(), rngs[i], greedy_actions)
            logprob = torch.log_softmax(logits[row].float(), -1)[action].item()
            value = values[row].item() * pgts.rewards.outcome_scale  # the head predicts in outcome units
            decision = Decision(state, action, logprob, value, -_cost(pgts, action))
            episode.decisions.append(decision)
            if action == BACKTRACK:
                episode.tree.backtrack()
            elif action == TERMINATE:
                episode.tree.done = True
            else:
                requests.append((i, episode.tree.parent_for(action)))
            if len(episode.decisions) >= max_actions and action in (BACKTRACK, TERMINATE):
                episode.tree.done = True
        _grow(models, pgts, episodes, requests, rngs)
        shaping = pgts.rewards.prm_weight * pgts.rewards.prm_scale
        for i, potential in zip(active, before):
            episode = episodes[i]
            if len(episode.decisions) >= max_actions:
                episode.tree.done = True
            after = 0.0 if episode.tree.done else episode.tree.potential()
            episode.decisions[-1].reward += shaping * (gamma * after - potential)
            if episode.tree.done:
                _settle(episode, pgts)
    return episodes


def _cost(pgts: PgtsSpec, action: int) -> float:
    costs = pgts.rewards.action_costs
    return (costs.expand, costs.branch, costs.backtrack, costs.terminate)[action]


def stats(episodes: list[Episode], seconds: float) -> SearchStats:
    count = max(len(episodes), 1)
    return SearchStats(seconds, sum(len(e.tree.nodes) - 1 for e in episodes) / count,
                       sum(e.tokens for e in episodes) / count,
                       sum(len(e.tree.leaves()) for e in episodes) / count)


def timed_search(models, pgts, problems, seeds, greedy_actions=False,
                 gamma: float = 1.0) -> tuple[list[Episode], SearchStats]:
    started = time.monotonic()
    episodes = []
    for start in range(0, len(problems), pgts.search_batch):
        episodes += search(models, pgts, problems[start:start + pgts.search_batch],
                           seeds[start:start + pgts.search_batch], greedy_actions, gamma)
    return episodes, stats(episodes, time.monotonic() - started)


def _choose(logits: torch.Tensor, rng: torch.Generator, greedy: bool) -> int:
    if greedy:
        return int(logits.argmax())
    return int((torch.log_softmax(logits, -1) + _gumbel(logits.shape[-1], rng)).argmax())


def _gumbel(size: int, rng: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(size, generator=rng).clamp(1e-10, 1 - 1e-10)
    return -torch.log(-torch.log(uniform))


def _grow(models: SearchModels, pgts: PgtsSpec, episodes: list[Episode], requests: list[tuple[int, int]],
          rngs: list[torch.Generator]) -> None:
    """Generate, score and place the new steps that this round's EXPAND and BRANCH actions ask for."""
    if not requests:
        return
    separator = models.separator
    prefixes = [_prefix(models, episodes[i].tree, parent) for i, parent in requests]
    paths = [_path_kv(episodes[i], parent) for i, parent in requests] if pgts.cache_kv else None
    # A node's first step is the generator's most likely one; further steps under it are samples.
    sampled = [not (pgts.greedy_first_step and episodes[i].tree.is_leaf(parent)) for i, parent in requests]
    texts, tokens = _generate_steps(models, prefixes, paths, [rngs[i] for i, _ in requests], pgts.temperature,
                                    sampled)
    made = [(i, parent, text, step, prefix, paths[row] if paths else None)
            for row, ((i, parent), text, step, prefix) in enumerate(zip(requests, texts, tokens, prefixes)) if text]
    for (i, _), text, step in zip(requests, texts, tokens):
        episodes[i].tokens += len(step)
        if not text:  # the generator ended without writing a step: nothing to add
            episodes[i].decisions[-1].reward += pgts.rewards.invalid_action
    if not made:
        return
    if pgts.cache_kv and models.prm_continues_paths:
        scores, prm_pieces = _score_after_paths(models, [(episodes[i], parent, text) for i, parent, text, *_ in made])
    else:
        solutions = [(episodes[i].tree.question, episodes[i].tree.steps(parent) + [text])
                     for i, parent, text, *_ in made]
        scores = [step_scores[-1] if step_scores else 0.0 for step_scores in prm.score(
            models.reward_model, models.prm_tokenizer, solutions, separator, len(solutions), PRM_MAX_TOKENS)]
        prm_pieces = [None] * len(made)
    if pgts.cache_kv:  # only the new steps' tokens run, after their paths' caches
        features, step_kv = _extend(models.generator, [path for *_, path in made],
                                    [step for _, _, _, step, _, _ in made])
    else:
        features, step_kv = _extend(models.generator, None, [prefix + step for _, _, _, step, prefix, _ in made])
    for (i, parent, text, step, _, _), score, feature, kv, prm_kv in zip(made, scores, features, step_kv, prm_pieces):
        child = episodes[i].tree.add_step(parent, text, score, feature, tuple(step))
        if pgts.cache_kv:
            episodes[i].kv[child] = kv
        if prm_kv is not None:
            episodes[i].prm_kv[child] = prm_kv


def _score_after_paths(models: SearchModels, steps: list[tuple[Episode, int, str]]
                       ) -> tuple[list[float], list[KeysValues | None]]:
    """The PRM's score of each new step (text after its parent's path), run after the path's cached
    PRM keys and values, with the step's own piece of that cache. The same scores prm.score gives the
    whole solution: a step past the PRM's context is not scored, and the path keeps its last score."""
    tokenizer = models.prm_tokenizer
    separator_ids = tokenizer(models.separator, add_special_tokens=False)["input_ids"]
    scores: list[float | None] = []
    runs: list[tuple[int, KeysValues, list[int]]] = []
    for row, (episode, parent, text) in enumerate(steps):
        nodes = [0, *episode.tree.path(parent)]
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] + separator_ids
        fits = all(node in episode.prm_kv for node in nodes) and \
            sum(episode.prm_kv[node][0][0].shape[2] for node in nodes) + len(piece) <= PRM_MAX_TOKENS
        if fits:
            runs.append((row, _path_kv(episode, parent, episode.prm_kv), piece))
            scores.append(None)
        else:
            scores.append(0.0 if parent == 0 else episode.tree.nodes[parent].score)
    pieces: list[KeysValues | None] = [None] * len(steps)
    if runs:
        out, made = _continue(models.reward_model, [path for _, path, _ in runs], [piece for *_, piece in runs])
        correct = out.logits.float().softmax(-1)[..., 1].cpu()
        for position, ((row, _, piece), kv) in enumerate(zip(runs, made)):
            scores[row] = float(correct[position, len(piece) - 1])
            pieces[row] = kv
    return scores, pieces


def _settle(episode: Episode, pgts: PgtsSpec) -> None:
    episode.kv.clear()  # a finished tree grows no more steps: give its caches' memory back
    episode.prm_kv.clear()
    episode.answer = episode.tree.final_answer()
    episode.correct = episode.problem.solved_by(episode.answer)
    outcome = pgts.rewards.correct if episode.correct else pgts.rewards.wrong
    episode.decisions[-1].reward += pgts.rewards.outcome_weight * outcome


def _prefix(models: SearchModels, tree: Tree, parent: int) -> list[int]:
    """The prompt and the path's steps so far, as the generator continues them."""
    return models.prompt(tree.question) + tree.tokens(parent)


def _path_kv(episode: Episode, node: int, kv: dict[int, KeysValues] | None = None) -> KeysValues:
    """The cache of the prompt and every step down to ``node``: its nodes' pieces end to end (the
    generator's, or those of ``kv``)."""
    kv = episode.kv if kv is None else kv
    pieces = [kv[index] for index in [0, *episode.tree.path(node)]]
    return [(torch.cat([piece[layer][0] for piece in pieces], dim=2),
             torch.cat([piece[layer][1] for piece in pieces], dim=2)) for layer in range(len(pieces[0]))]


def _batched_cache(paths: list[KeysValues], width: int, model) -> DynamicCache:
    """The paths' caches as one batch, left-padded to ``width`` tokens like the rows' input ids."""
    def left_pad(tensor: torch.Tensor) -> torch.Tensor:
        return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))

    layers = [(torch.cat([left_pad(path[layer][0]) for path in paths]),
               torch.cat([left_pad(path[layer][1]) for path in paths])) for layer in range(len(paths[0]))]
    return DynamicCache(ddp_cache_data=layers, config=model.config)


def _extend(model, paths: list[KeysValues] | None,
            sequences: list[list[int]]) -> tuple[list[torch.Tensor], list[KeysValues]]:
    """Run the generator on each sequence after its path's cache (none: from the start). Returns the
    last layer's hidden state at each sequence's last token (the new node's feature, fp32 on the CPU)
    and the keys and values of the sequence's own tokens (the new node's piece of the cache)."""
    out, pieces = _continue(model, paths, sequences, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    return [hidden[row, len(sequence) - 1].float().cpu() for row, sequence in enumerate(sequences)], pieces


@torch.no_grad()
def _continue(model, paths: list[KeysValues] | None, sequences: list[list[int]], **outputs):
    """Run ``model`` on each sequence after its path's cache (none: from the start); returns the
    model's output (rows right-padded) and each sequence's own keys and values."""
    device = next(model.parameters()).device
    past = [path[0][0].shape[2] for path in paths] if paths else [0] * len(sequences)
    width, length = max(past), max(len(sequence) for sequence in sequences)
    ids = torch.zeros((len(sequences), length), dtype=torch.long)
    mask = torch.zeros((len(sequences), width + length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        # The new tokens are right-padded after the (left-padded) path, so every row's tokens sit
        # in the same columns of the returned cache.
        ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, width - past[row]:width + len(sequence)] = 1
    positions = torch.tensor(past)[:, None] + torch.arange(length)[None]
    cache = _batched_cache(paths, width, model) if paths else DynamicCache(config=model.config)
    # A token classification model returns no cache: the one passed in is filled in place.
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                past_key_values=cache, use_cache=True, **outputs)
    pieces = [[(layer.keys[row:row + 1, :, width:width + len(sequence)].clone(),
                layer.values[row:row + 1, :, width:width + len(sequence)].clone())
               for layer in cache.layers] for row, sequence in enumerate(sequences)]
    return out, pieces


@torch.no_grad()
def _generate_steps(models: SearchModels, prefixes: list[list[int]], paths: list[KeysValues] | None,
                    rngs: list[torch.Generator], temperature: float,
                    sampled: list[bool]) -> tuple[list[str], list[list[int]]]:
    """One reasoning step per prefix: its text without the separator ("" when none) and the tokens
    drawn for it, up to and including the separator or end of turn; a row not ``sampled`` is decoded
    greedily. With the prefixes' cached ``paths``, only each prefix's last token is run again (to get
    the next token's scores)."""
    tokenizer, model = models.tokenizer, models.generator
    device = next(model.parameters()).device
    ids, mask = left_padded(prefixes, tokenizer.pad_token_id)
    stop = _StepEnd(tokenizer, models.separator, ids.shape[1])
    sampler = _RowSampler(rngs, temperature, stop, sampled)
    cache = None
    if paths:
        # Left-padded to one token less than the ids: the cache ends where each row's last token begins.
        cache = _batched_cache([[(k[:, :, :-1], v[:, :, :-1]) for k, v in path] for path in paths],
                               ids.shape[1] - 1, model)
    output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                            do_sample=False, max_new_tokens=models.max_step_tokens,
                            logits_processor=LogitsProcessorList([sampler]),
                            stopping_criteria=StoppingCriteriaList([stop]), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=None, temperature=None, top_p=None, top_k=None)
    texts, tokens = [], []
    for row in output[:, ids.shape[1]:].tolist():
        row = row[: stop.lengths.get(len(texts), len(row))]
        tokens.append(row)
        texts.append(_step_text(tokenizer.decode(row, skip_special_tokens=True), models.separator))
    return texts, tokens


def _step_text(text: str, separator: str) -> str:
    if FINAL_MARK in text:
        mark, _, rest = text.partition(FINAL_MARK)
        if mark.strip():  # reasoning before the answer line: that reasoning is this step
            return mark.split(separator)[0].strip()
        number = extract_number(rest)
        return f"{FINAL_MARK} {number}" if number is not None else ""
    return text.split(separator)[0].strip()


class _StepEnd(StoppingCriteria):
    """A row is done at its step separator, at end of turn, or, on the answer line, once the
    number is complete (a separator or end of turn after it): the answer is never cut short."""

    def __init__(self, tokenizer, separator: str, prompt_width: int):
        self.tokenizer, self.separator, self.width = tokenizer, separator, prompt_width
        self.finished: set[int] = set()
        self.lengths: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs):
        done = []
        for row, sequence in enumerate(input_ids.tolist()):
            if row not in self.finished and self._ends(sequence[self.width:]):
                self.finished.add(row)
                self.lengths[row] = len(sequence) - self.width
            done.append(row in self.finished)
        return torch.tensor(done, device=input_ids.device)

    def _ends(self, new: list[int]) -> bool:
        if self.tokenizer.eos_token_id in new:
            return True
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if FINAL_MARK in text:
            return self.separator in text.partition(FINAL_MARK)[2]
        return self.separator in text


class _RowSampler(LogitsProcessor):
    """Temperature sampling by Gumbel-max with each row's own generator, drawn only while the row
    is unfinished (then greedy decoding of the perturbed scores is a sample); rows not ``sampled``
    draw nothing and stay greedy."""

    def __init__(self, rngs: list[torch.Generator], temperature: float, stop: _StepEnd, sampled: list[bool]):
        self.rngs, self.temperature, self.stop, self.sampled = rngs, temperature, stop, sampled

    def __call__(self, input_ids, scores):
        scores = scores.float() / self.temperature
        for row, rng in enumerate(self.rngs):
            if self.sampled[row] and row not in self.stop.finished:
                scores[row] = torch.log_softmax(scores[row], -1) + _gumbel(scores.shape[-1], rng).to(scores.device)
        return scores
