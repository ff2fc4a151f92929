"""Several processes (torchrun / accelerate launch): rank and world from the environment, the collectives the trainer
needs, FSDP2 sharding, and the per-sequence → [B, C] slot scatter every loss input goes through."""

from __future__ import annotations

import os
from typing import Any


class DistributedContext:
    """rank/world from torchrun or accelerate's environment; gloo on CPU, NCCL on CUDA."""

    def __init__(self, device_choice: str):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice.startswith("cuda")
        self.device = torch.device(f"cuda:{local}" if use_cuda and self.world > 1 else ("cuda" if use_cuda else "cpu"))
        if self.world > 1 and not torch.distributed.is_initialized():
            if use_cuda:
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")

    def mean(self, values: list[float]) -> list[float]:
        import torch

        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def total(self, values: list[float]) -> list[float]:
        """`values` summed over the ranks, in float64 (a collective: every rank calls it)."""
        import torch

        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather_all(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values`, in rank order (one entry when not distributed)."""
        import torch

        if self.world == 1:
            return [values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        gathered = [torch.zeros_like(tensor) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, tensor)
        return [t.tolist() for t in gathered]

    def barrier(self) -> None:
        import torch

        if self.world > 1:
            torch.distributed.barrier()


def checksum(tensors: Any) -> list[float]:
    """(Σ w, Σ w²) over the tensors in float64: equal on all DDP ranks when they stayed in sync."""
    import torch

    tensors = list(tensors)
    with torch.no_grad():
        return [sum(float(t.detach().double().sum()) for t in tensors), sum(float(t.detach().double().pow(2).sum()) for t in tensors)]


def shard_policy(model: Any, forward: Any, device_type: str, world: int) -> None:
    """FSDP2: one unit per decoder layer, the rest (embeddings, norm, head) in the root unit = our forward
    module, whose forward is the one the loop calls (so the root gathers its parameters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world,))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(forward, mesh=mesh)


def gather_full_state(model: Any) -> dict[str, Any]:
    """The whole (unsharded) state dict on rank 0, on CPU; empty on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):  # tied weights (a head tied to the
        if id(parameter) in seen:  # embeddings) are saved once, as
            state.pop(name, None)  # save_pretrained does
        seen.add(id(parameter))
    return state


def scatter_to_slots(per_sequence: Any, batch: Any, device: Any) -> Any:
    """[N] per-sequence values → [B, C] slots (padded slots 0; they are masked in every loss)."""
    import torch

    flat = torch.zeros(batch.candidate_mask.numel(), dtype=per_sequence.dtype, device=device)
    flat = flat.index_put((batch.slots.to(device),), per_sequence)
    return flat.view(batch.candidate_mask.shape)
