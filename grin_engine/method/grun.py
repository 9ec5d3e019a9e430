"""GRUN (Ren et al. 2025, arXiv 2502.17823): gated representation unlearning, base weights frozen (DESIGN.md §2.9).

Instead of changing weights, GRUN edits the hidden state ("residual stream") at the last prompt token of a few layers:

    h' = h + sigmoid(g(h)) * R^T (W h + b - R h)          (LoReFT, Wu et al. 2024, with a gate)

R (rank x d) has orthonormal rows: R h are the coordinates of h in a small subspace, and the edit replaces them with
the learned W h + b, leaving the rest of h alone. The gate g decides how much of the edit to apply: it is trained
to open (-> 1) on forget questions and stay shut (-> 0) on retain questions, so the model is unchanged where it
should be. Only R, W, b and g train (a few thousand numbers per layer).

The edit is applied with plain forward hooks (no pyreft / pyvene):
- a pre-hook on the whole model finds, in each row of input_ids, the last prompt token: the end of the chat
  template's generation prompt (e.g. "<|im_start|>assistant\\n"). Training batches (prompt + answer), scoring
  batches and the first forward of `generate` (the prompt) all contain it, so every engine function works with the
  intervention unchanged. Generation's later steps feed one token at a time: no edit there, the KV cache carries the
  edited prompt states to every generated token;
- a forward hook on each chosen decoder layer edits the hidden state at those positions.
`Grun.off()` switches the edit off (the model is then exactly the original); `detach()` removes the hooks.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GrinConfig
from ..data import QAItem, forget_batches, format_prompt, qa_batches
from ..errors import GrinError
from ..events import Progress
from ..models import input_device
from .losses import get_loss, total
from .training import TrainResult, train_loop
from .unlearn import attach_reference, move_batch


@dataclass
class GrunSpec:
    """The shape of a GRUN intervention (saved with it, so that it can be rebuilt)."""
    hidden_size: int
    layers: list[int]  # decoder layers whose output is edited
    rank: int = 4
    gate: str = "linear"  # "linear" or "mlp"


def default_layers(num_layers: int, how_many: int = 3) -> list[int]:
    """`how_many` layers spread evenly over the upper half, ending at the last one (30 layers: 15, 22, 29)."""
    first, last = num_layers // 2, num_layers - 1
    if how_many == 1 or last <= first:
        return [last]
    step = (last - first) / (how_many - 1)
    return sorted({round(first + i * step) for i in range(how_many)})


class GatedLoReFT(nn.Module):
    """h -> h + sigmoid(g(h)) * R^T (W h + b - R h); returns the edited h and the gate value."""

    def __init__(self, hidden_size: int, rank: int, gate: str, generator: torch.Generator):
        super().__init__()
        self.rotate = nn.Linear(hidden_size, rank, bias=False)  # weight = R, rank x d
        with torch.no_grad():
            self.rotate.weight.copy_(torch.linalg.qr(torch.randn(hidden_size, rank, generator=generator))[0].T)
        # Keeps R's rows orthonormal through training (R = a function of a free matrix, as in pyreft).
        nn.utils.parametrizations.orthogonal(self.rotate)
        self.source = nn.Linear(hidden_size, rank)  # W h + b
        with torch.no_grad():  # start at W = R, b = 0: the edit is exactly zero until training moves it
            self.source.weight.copy_(self.rotate.weight)
            self.source.bias.zero_()
        if gate == "linear":
            self.gate = nn.Linear(hidden_size, 1)
        elif gate == "mlp":
            self.gate = nn.Sequential(nn.Linear(hidden_size, 64), nn.GELU(), nn.Linear(64, 1))
        else:
            raise GrinError(f"grun gate must be 'linear' or 'mlp', got {gate!r}")

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The gate reads h scaled to unit RMS: hidden states of upper layers are large (and their scale differs
        # between models), and a gate logit of order 1 at the start keeps the sigmoid away from saturation.
        gate = torch.sigmoid(self.gate(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))).squeeze(-1)
        R = self.rotate.weight
        edit = (self.source(h) - h @ R.T) @ R
        return h + gate.unsqueeze(-1) * edit, gate


def decoder_layers(model) -> nn.ModuleList:
    """The model's list of transformer blocks (Llama/Qwen/Mistral/Gemma/Phi, GPT-2, GPT-NeoX, OPT ...)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise GrinError(f"grun: cannot find the {n} transformer blocks of {type(model).__name__}")


def prompt_end_ids(tokenizer) -> list[int]:
    """The token ids every prompt ends with (the chat template's generation prompt, or "Answer:" without one):
    the longest common suffix of two formatted prompts."""
    a = tokenizer(format_prompt(tokenizer, "Who wrote it"), add_special_tokens=False)["input_ids"]
    b = tokenizer(format_prompt(tokenizer, "Name the 3 largest cities."), add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    if n == 0:
        raise GrinError("grun: cannot find where this tokenizer's prompts end (no common suffix)")
    return a[len(a) - n:]


def last_prompt_positions(input_ids: torch.Tensor, end_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of the last token of the last occurrence of end_ids in each row; rows without it are left
    out."""
    k = len(end_ids)
    if input_ids.dim() != 2 or input_ids.shape[1] < max(k, 2):  # one-token inputs: generation steps, no prompt
        empty = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        return empty, empty
    windows = input_ids.unfold(1, k, 1)  # [B, L - k + 1, k]
    hits = (windows == torch.tensor(end_ids, device=input_ids.device)).all(-1)
    found = hits.any(1)
    last_start = hits.shape[1] - 1 - hits.flip(1).int().argmax(1)
    rows = found.nonzero().squeeze(1)
    return rows, last_start[rows] + k - 1


def grun_for(model, cfg: GrinConfig) -> "Grun":
    """A new GRUN for `model` from the run's config: cfg.grun_layers (default: default_layers), rank, gate, seed."""
    config = model.config
    layers = cfg.grun_layers or default_layers(config.num_hidden_layers)
    return Grun(GrunSpec(hidden_size=config.hidden_size, layers=list(layers), rank=int(cfg.grun_rank),
                         gate=cfg.grun_gate), seed=cfg.seed)


class Grun(nn.Module):
    """Gated LoReFT edits on some layers of a causal LM. Build, `attach(model, tokenizer)`, train, `save`."""

    def __init__(self, spec: GrunSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        generator = torch.Generator().manual_seed(seed)
        # nn.Linear draws its initial weights from the global generator: seed it here too (same seed, same GRUN),
        # without disturbing the caller's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.edits = nn.ModuleList([GatedLoReFT(spec.hidden_size, spec.rank, spec.gate, generator)
                                        for _ in spec.layers])
        self.enabled = True
        self._handles: list = []
        self._where: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, positions) of the current forward
        self._end_ids: list[int] = []
        self.recording = False
        self.records: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []  # (input_ids, rows, gates)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def attach(self, model, tokenizer) -> "Grun":
        """Hook the edits into `model` (its weights are not touched). The edits move to the model's device."""
        if self._handles:
            raise GrinError("grun: already attached to a model")
        blocks = decoder_layers(model)
        if max(self.spec.layers) >= len(blocks) or min(self.spec.layers) < 0:
            raise GrinError(f"grun: layers {self.spec.layers} do not exist in a model with {len(blocks)} layers")
        for edit, layer in zip(self.edits, self.spec.layers):  # each edit lives where its layer's weights live
            edit.to(next(blocks[layer].parameters()).device)
        self._end_ids = prompt_end_ids(tokenizer)
        self._handles.append(model.register_forward_pre_hook(self._find_positions, with_kwargs=True))
        for i, layer in enumerate(self.spec.layers):
            self._handles.append(blocks[layer].register_forward_hook(self._edit_hook(i)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def off(self):
        """Inside this block the attached model is exactly the original model."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def _find_positions(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not self.enabled or input_ids is None:
            self._where = None
            return
        self._where = last_prompt_positions(input_ids, self._end_ids)
        if self.recording and self._where[0].numel():
            self.records.append((input_ids, self._where[0], []))

    def _edit_hook(self, i: int):
        def hook(module, args, output):
            if not self.enabled or self._where is None or self._where[0].numel() == 0:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            rows, positions = (t.to(hidden.device) for t in self._where)  # layers may sit on different devices
            edited, gate = self.edits[i](hidden[rows, positions].float())
            hidden = hidden.index_put((rows, positions), edited.to(hidden.dtype))  # out of place: autograd-safe
            if self.recording:
                self.records[-1][2].append(gate)
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        return hook

    # -- gates ---------------------------------------------------------------------------------------------------
    def gates_of(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The gates recorded while the model ran on exactly this input_ids tensor: [layers, rows], or None."""
        for ids, _rows, gates in self.records:
            if ids is input_ids and gates:
                return torch.stack([g.to(gates[0].device) for g in gates])
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Training


def gate_loss(grun: Grun, forget: dict, retain: dict) -> torch.Tensor:
    """BCE(gate, 1) over every forward of this step on forget questions, BCE(gate, 0) on retain questions."""
    terms = []
    for part, target in ((forget, 1.0), (forget.get("idk"), 1.0), (retain, 0.0)):
        gates = grun.gates_of(part["input_ids"]) if part is not None else None
        if gates is not None:
            terms.append(F.binary_cross_entropy(gates.clamp(1e-6, 1 - 1e-6), torch.full_like(gates, target)))
    return torch.stack([t.to(terms[0].device) for t in terms]).mean()


def train_grun(model, tokenizer, grun: Grun, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
               progress: Progress | None = None, until=None) -> TrainResult:
    """Train the attached GRUN edits for cfg.grun_steps steps; the model's own weights never get a gradient.

    loss = LOSSES[cfg.grun_loss](model with the edits, forget, retain)   (forget term + alpha * NLL(retain))
           + cfg.grun_gate_weight * gate_loss
    The reference pi_ref of npo / dpo is the model with the edits off, i.e. the original model.

    idk is the default loss: the edit learns to steer forget questions to a refusal, a bounded target. With
    gradient ascent (ga, graddiff) nothing bounds the edit; on the default model it grew until forget answers were
    noise, and the part of it that a half-open gate lets through hurt retain answers too (retain keyword accuracy
    0.70 against 0.81 with idk, same steps; docs/RESULTS.md).
    """
    loss_fn = get_loss(cfg.grun_loss)
    device = input_device(model)
    f_batches = forget_batches(tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.seed, cfg.label_layout)
    r_batches = qa_batches(tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout)
    with grun.off():
        attach_reference(model, f_batches)
    for param in model.parameters():
        param.requires_grad_(False)
    params = list(grun.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.grun_lr, weight_decay=0.0)

    def step_loss(step):
        forget_batch = move_batch(f_batches[step % len(f_batches)], device)
        retain_batch = move_batch(r_batches[step % len(r_batches)], device)
        grun.records, grun.recording = [], True
        try:
            # one tensor: the gate loss reads the gates of both passes, so the terms cannot be backpropagated apart
            loss = total(loss_fn(model, forget_batch, retain_batch, cfg))
            return loss + cfg.grun_gate_weight * gate_loss(grun, forget_batch, retain_batch).to(loss.device)
        finally:
            grun.records, grun.recording = [], False

    grun.train()
    try:
        return train_loop(step_loss, params, optimizer, cfg.grun_steps, cfg.max_grad_norm, progress, until=until,
                          what="GRUN training")  # until: checked with the edits on
    finally:
        grun.recording, grun.records = False, []
        grun.eval()


@torch.no_grad()
def gate_values(model, tokenizer, grun: Grun, questions: list[str], batch_size: int = 16) -> list[float]:
    """The gate of each question (mean over the edited layers), from a forward pass on its prompt."""
    device = input_device(model)
    values = []
    grun.records, grun.recording = [], True
    try:
        for start in range(0, len(questions), batch_size):
            prompts = [format_prompt(tokenizer, q) for q in questions[start: start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            model(**enc)
            gates = grun.gates_of(enc["input_ids"])
            per_row = torch.full((len(prompts),), float("nan"))
            if gates is not None:
                per_row[grun.records[-1][1].cpu()] = gates.mean(0).float().cpu()
            values += per_row.tolist()
            grun.records = []
    finally:
        grun.recording, grun.records = False, []
    return values


# ---------------------------------------------------------------------------------------------------------------------
# Keeping and saving: plain tensors plus the spec (a parametrized module itself does not pickle)


@dataclass
class GrunState:
    """A trained GRUN as CPU data: what a run returns, a web app keeps per visitor, a file holds."""
    spec: GrunSpec
    tensors: dict[str, torch.Tensor]

    def build(self) -> Grun:
        grun = Grun(self.spec)
        try:
            grun.load_state_dict(self.tensors)
        except RuntimeError as exc:  # missing or misshapen tensors: a file that does not match its own spec
            raise GrinError(f"grun: the saved tensors do not match the spec {self.spec} "
                            f"({str(exc).splitlines()[0]})") from None
        return grun


def export_state(grun: Grun) -> GrunState:
    return GrunState(spec=grun.spec, tensors={k: v.detach().cpu().clone() for k, v in grun.state_dict().items()})


def save_grun(state: GrunState, path: str, model_name: str = "") -> str:
    """Write a GRUN to one .safetensors file (4 MB for the default model), its spec in the metadata."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.tensors.items()}, str(path),
              metadata={"format": "pt", "written_by": "grin_engine.grun", "spec": json.dumps(asdict(state.spec)),
                        "model": model_name})
    return str(path)


def load_grun(path: str) -> GrunState:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            spec = GrunSpec(**json.loads((f.metadata() or {})["spec"]))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as exc:
        raise GrinError(f"grun: {path} is not a GRUN file written by grin_engine ({exc})") from None
    return GrunState(spec, tensors)
